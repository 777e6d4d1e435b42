"""The engine over a route of deployments, embedded (in-memory cool-downs): the
fallback answers and is charged; a cooled-down model is skipped; when every model is
cooling down the request fails at once; the ledger adds up in every case."""

import uuid
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings

from billing.models import LedgerEntry, Tenant
from chatproject.redis_multiplexed import _Protocol
from chats import catalog, cooldown, failover
from chats.engine import ErrorEvent, FinishedEvent, GenerationRequest, start_generation
from chats.models import LLMModel, Message, ModelFallback
from chats.providers import (
    CompletionRequest,
    LLMProviderError,
    OpenAICompatibleProvider,
    TokenDelta,
    aclose_shared_client,
)
from tests.factories import make_chat, make_tenant
from tests.fakes.upstream import FakeUpstream, expected_text

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def embedded(settings, fresh_catalog):
    settings.REDIS_URL = ""
    settings.MODEL_COOLDOWN_FAILURES = 2
    settings.MODEL_COOLDOWN_SECONDS = 60
    cooldown.forget()
    tenant = make_tenant(credits=100)
    yield tenant, make_chat(tenant)
    cooldown.forget()


async def deploy(up: FakeUpstream, name: str, behaviour: str, price: str) -> LLMModel:
    return await LLMModel.objects.acreate(
        name=name,
        provider="openai_compatible",
        upstream_model=f"{name}+{behaviour}",
        base_url=up.openai_base_url,
        input_price_per_1k=Decimal(price),
        output_price_per_1k=Decimal(price),
    )


async def ask(tenant, chat, model: str):
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant, chat=chat, model=model, messages=[{"role": "user", "content": "hi"}]
        )
    )
    events = [event async for event in generation.events()]
    return generation, events[-1]


async def ledger_adds_up(tenant: Tenant) -> bool:
    amounts = await sync_to_async(list)(
        LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True)
    )
    balance = (await Tenant.objects.aget(pk=tenant.pk)).credit_balance
    return sum(amounts, Decimal(0)) == balance


def asked(up: FakeUpstream, model: LLMModel) -> int:
    return sum(1 for body in up.requests if body["model"] == model.upstream_model)


async def test_a_cooled_down_model_is_skipped_then_every_one_cooling_fails_at_once(embedded):
    tenant, chat = embedded
    async with FakeUpstream() as up:
        first = await deploy(up, "first", "status-500", "1")
        backup = await deploy(up, "backup", "tokens-4", "7")
        await ModelFallback.objects.acreate(model=first, fallback=backup)

        for _ in range(3):
            generation, end = await ask(tenant, chat, "first")
            assert isinstance(end, FinishedEvent)
            assert (generation.model_name, end.content) == ("backup", expected_text(4))
            stored = await Message.objects.aget(pk=end.message_id)
            assert stored.model == "backup"
        # Two failures cooled the first model down: the third request went to the backup.
        assert (asked(up, first), asked(up, backup)) == (2, 3)

        await LLMModel.objects.filter(pk=backup.pk).aupdate(upstream_model="backup+status-503")
        for _ in range(2):
            _, end = await ask(tenant, chat, "first")
            assert isinstance(end, ErrorEvent)
        before = asked(up, backup)
        _, end = await ask(tenant, chat, "first")  # both cooling down: no upstream is asked
        assert isinstance(end, ErrorEvent)
        assert end.error.code == "LLM_PROVIDER_ERROR" and "cooling down" in end.error.message
        assert end.credits_charged == 0
        assert asked(up, backup) == before
    assert await ledger_adds_up(tenant)


def resolved(up: FakeUpstream, name: str, behaviour: str) -> catalog.ResolvedModel:
    return catalog.ResolvedModel(
        name=name,
        provider_name="openai_compatible",
        upstream_model=f"{name}+{behaviour}",
        context_window=16000,
        max_output_tokens=64,
        input_price_per_1k=Decimal(1),
        output_price_per_1k=Decimal(1),
        provider=OpenAICompatibleProvider(up.openai_base_url, None),
    )


async def test_later_model_calls_of_a_request_stay_on_the_model_that_answered(embedded):
    async with FakeUpstream() as up:
        first, backup = resolved(up, "first", "status-500"), resolved(up, "backup", "tokens-2")
        served = []
        provider = failover.Failover([first, backup], lambda d, r: served.append((d.name, r)))
        request = CompletionRequest(
            model=first.upstream_model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=1000,
        )
        for _ in range(2):  # as the steps of a tool loop call it
            items = [item async for item in provider.stream(request)]
            assert "".join(i.text for i in items if isinstance(i, TokenDelta)) == expected_text(2)
        assert [body["model"] for body in up.requests] == [
            "first+status-500",
            "backup+tokens-2",
            "backup+tokens-2",
        ]
        # Heard once, with the request fitted to the fallback: its id and output limit.
        assert [(name, r.model, r.max_tokens) for name, r in served] == [
            ("backup", "backup+tokens-2", 64)
        ]
        await aclose_shared_client()


async def test_an_error_that_is_not_the_models_fault_is_not_retried(embedded):
    async with FakeUpstream() as up:
        first, backup = resolved(up, "first", "status-400"), resolved(up, "backup", "tokens-2")
        provider = failover.Failover([first, backup], lambda d, r: None)
        request = CompletionRequest(
            model=first.upstream_model, messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(LLMProviderError) as raised:
            [item async for item in provider.stream(request)]
        assert raised.value.status == 400
        assert [body["model"] for body in up.requests] == ["first+status-400"]
        await aclose_shared_client()


@pytest.fixture
def in_redis(settings, fresh_catalog):
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    settings.MODEL_COOLDOWN_FAILURES = 1  # one failure cools a model down
    settings.MODEL_COOLDOWN_SECONDS = 60
    tenant = make_tenant(credits=100)
    assert tenant.plan is not None  # loaded, as requests find it (the API key cache has it)
    return tenant, make_chat(tenant)


async def test_the_cool_downs_are_read_with_admissions_first_redis_commands(in_redis, monkeypatch):
    tenant, chat = in_redis
    writes: list[list[bytes]] = []
    flush = _Protocol.flush

    def recorded(self):
        if self.outgoing:
            writes.append([command.split(b"\r\n")[2] for command in self.outgoing])
        flush(self)

    monkeypatch.setattr(_Protocol, "flush", recorded)
    suffix = uuid.uuid4().hex[:8]  # the shared Redis keeps cool-downs by model name
    async with FakeUpstream() as up:
        first = await deploy(up, f"first-{suffix}", "tokens-3", "1")
        backup = await deploy(up, f"backup-{suffix}", "tokens-3", "1")
        await ModelFallback.objects.acreate(model=first, fallback=backup)
        assert await cooldown.record_failure(first.name)
        generation, end = await ask(tenant, chat, first.name)
        assert isinstance(end, FinishedEvent) and generation.model_name == backup.name
        assert asked(up, first) == 0
    # Out with the rate limit's and the cache's commands, before the stream log's first.
    read = next(write for write in writes if b"MGET" in write)
    assert len(read) > 1 and b"XADD" not in read, writes
