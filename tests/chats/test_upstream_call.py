"""The model's request sent while admission's statement is out: only for a tenant whose
balance last seen covers the hold; nothing the model sends goes anywhere before admission
has committed; a refused or abandoned admission closes the call, storing and charging
nothing. Against a real HTTP upstream (tests/fakes/upstream.py), both write paths."""

import asyncio
from decimal import Decimal

import pytest
import pytest_asyncio

from billing.models import LedgerEntry, Tenant
from chatproject.errors import ApiError
from chats.engine import FinishedEvent, GenerationRequest, admission, start_generation
from chats.models import LLMModel, Message
from governor.policies import policy_get_or_create
from tests.factories import make_chat, make_tenant
from tests.fakes.upstream import FakeUpstream, expected_text
from tests.polling import apoll

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tenant_chat(db, engine_writes):
    tenant = make_tenant(credits=100)
    policy_get_or_create(tenant=tenant)  # stored: the first request caches it for the next
    return tenant, make_chat(tenant)


@pytest_asyncio.fixture
async def upstream(fresh_catalog):
    async with FakeUpstream("tokens-4") as up:
        # slow-llm's first token comes two seconds after it is asked.
        models = (("local-llm", "served-model"), ("slow-llm", "slow+delay-2000"))
        for name, upstream_model in models:
            await LLMModel.objects.acreate(
                name=name,
                provider="openai_compatible",
                upstream_model=upstream_model,
                base_url=up.openai_base_url,
                input_price_per_1k=Decimal(1),
                output_price_per_1k=Decimal(2),
            )
        yield up


class HeldAdmission:
    """Admission's writes wait until :meth:`release` (the model's request is out by then,
    if it is sent early)."""

    def __init__(self, monkeypatch) -> None:
        self.entered, self.done = asyncio.Event(), asyncio.Event()
        self._released = asyncio.Event()
        real = admission._admission

        async def held(*args):
            self.entered.set()
            await self._released.wait()
            try:
                return await real(*args)
            finally:
                self.done.set()

        monkeypatch.setattr(admission, "_admission", held)

    def release(self) -> None:
        self._released.set()


def ask(tenant, chat, text: str = "hello", model: str = "local-llm") -> GenerationRequest:
    return GenerationRequest(
        tenant=tenant, chat=chat, model=model, messages=[{"role": "user", "content": text}]
    )


async def answer(request: GenerationRequest) -> FinishedEvent:
    generation = await start_generation(request)
    events = [event async for event in generation.events()]
    assert isinstance(events[-1], FinishedEvent), events[-1]
    return events[-1]


async def balance(tenant: Tenant) -> Decimal:
    return (await Tenant.objects.aget(pk=tenant.pk)).credit_balance


async def ledger_sum(tenant: Tenant) -> Decimal:
    amounts = LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True)
    return sum([amount async for amount in amounts], Decimal(0))


def calls_reading() -> list[asyncio.Task]:
    """Model calls whose first item is still being read."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "UpstreamCall._next" in repr(task.get_coro())
    ]


async def test_the_model_is_asked_while_admission_writes(tenant_chat, upstream, monkeypatch):
    tenant, chat = tenant_chat
    await answer(ask(tenant, chat))  # the tenant's balance is seen here
    held = HeldAdmission(monkeypatch)
    starting = asyncio.ensure_future(start_generation(ask(tenant, chat, "again")))
    await held.entered.wait()
    await apoll(lambda: len(upstream.requests) == 2)  # asked, admission still out
    assert not starting.done()
    assert not await Message.objects.filter(chat=chat, content="again").aexists()
    held.release()
    generation = await starting
    events = [event async for event in generation.events()]
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    assert finished.content == expected_text(4)
    assert finished.credits_charged > 0
    stored = await Message.objects.aget(pk=finished.message_id)
    assert (stored.status, stored.content) == ("complete", expected_text(4))
    assert await ledger_sum(tenant) == await balance(tenant) == finished.credits_remaining


async def test_a_tenant_not_seen_yet_waits_for_its_hold(tenant_chat, upstream, monkeypatch):
    tenant, chat = tenant_chat
    admission._balances.pop(admission._balance_key(tenant), None)
    held = HeldAdmission(monkeypatch)
    starting = asyncio.ensure_future(answer(ask(tenant, chat)))
    await held.entered.wait()
    await asyncio.sleep(0.2)
    assert upstream.requests == []  # nothing asked before the hold is taken
    held.release()
    finished = await starting
    assert finished.content == expected_text(4)
    assert len(upstream.requests) == 1


async def test_a_hold_refused_after_the_model_was_asked_closes_the_call(tenant_chat, upstream):
    tenant, chat = tenant_chat
    await answer(ask(tenant, chat))
    # Another process spends the rest of the balance: this one's last sight of it is stale.
    await Tenant.objects.filter(pk=tenant.pk).aupdate(credit_balance=0)
    ledger = await ledger_sum(tenant)
    with pytest.raises(ApiError) as refused:
        await start_generation(ask(tenant, chat, "refused", model="slow-llm"))
    assert refused.value.code == "INSUFFICIENT_CREDITS"
    assert len(upstream.requests) == 2  # it was asked...
    await apoll(lambda: not calls_reading(), timeout=1)  # ...and the call is closed
    assert not await Message.objects.filter(chat=chat, content="refused").aexists()
    assert await balance(tenant) == 0
    assert await ledger_sum(tenant) == ledger  # nothing held, nothing charged
    # Refused once, the tenant's next request waits for its hold: the model is not asked.
    with pytest.raises(ApiError):
        await start_generation(ask(tenant, chat, "refused again"))
    assert len(upstream.requests) == 2


async def test_a_caller_leaving_while_admission_writes_closes_the_call(
    tenant_chat, upstream, monkeypatch
):
    tenant, chat = tenant_chat
    await answer(ask(tenant, chat))
    before = await balance(tenant)
    held = HeldAdmission(monkeypatch)
    starting = asyncio.ensure_future(start_generation(ask(tenant, chat, "left", "slow-llm")))
    await held.entered.wait()
    await apoll(lambda: len(upstream.requests) == 2)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await apoll(lambda: not calls_reading(), timeout=1)  # closed while admission writes
    held.release()
    await held.done.wait()

    async def given_back() -> bool:  # once admitted, the hold is released whole
        return await balance(tenant) == before

    await apoll(given_back)
    assert await ledger_sum(tenant) == before
    answers = Message.objects.filter(chat=chat, role=Message.Role.ASSISTANT)
    assert await answers.acount() == 1  # the first request's only
