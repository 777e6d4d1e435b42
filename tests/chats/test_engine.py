"""The streaming engine: routing, context, endings, settlement, real upstreams."""

import asyncio
import time
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import InterfaceError, connection

from billing import response_cache, store
from billing.models import LedgerEntry, Tenant
from chatproject.errors import ApiError
from chats import catalog
from chats.context import trim_to_budget
from chats.engine import (
    ErrorEvent,
    FinishedEvent,
    GenerationRequest,
    TokenEvent,
    finalisation,
    start_generation,
)
from chats.models import Chat, LLMModel, Message
from chats.providers import estimate_prompt_tokens
from governor import gate
from governor.models import AuditRecord
from governor.policies import policy_for_tenant
from tests.factories import make_chat, make_tenant
from tests.fakes.upstream import FakeUpstream, expected_text
from tests.polling import apoll

# --- context window (pure) -------------------------------------------------------------


def msg(role: str, chars: int) -> dict[str, str]:
    return {"role": role, "content": "x" * chars}


def test_trim_keeps_everything_that_fits():
    messages = [msg("system", 40), msg("user", 40), msg("assistant", 40), msg("user", 40)]
    assert trim_to_budget(messages, 1000) == messages


def test_trim_drops_oldest_non_system_first():
    system, old, reply, new = (
        msg("system", 40),
        msg("user", 400),
        msg("assistant", 40),
        msg("user", 40),
    )
    assert trim_to_budget([system, old, reply, new], 40) == [system, reply, new]
    assert trim_to_budget([system, old, reply, new], 25) == [system, new]


def test_trim_never_drops_the_last_message_or_system():
    messages = [msg("system", 400), msg("user", 4000)]
    assert trim_to_budget(messages, 10) == messages


# --- routing ------------------------------------------------------------------------------


def route(**asked) -> catalog.Route:
    """The route a request asking for ``asked`` takes: the engine's lookup."""
    return async_to_sync(catalog.aresolve_route)(**asked)


@pytest.mark.parametrize("tier", ["cheap", "balanced", "frontier"])
def test_every_tier_routes_to_demo_without_credentials(seeded_catalog, monkeypatch, tier):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert route(quality=tier).first.name == f"demo/{tier}"


def test_a_configured_provider_wins_its_tier(seeded_catalog, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    resolved = route(quality="balanced").first
    assert (resolved.name, resolved.provider_name) == ("gpt-4o-mini", "openai")


@pytest.mark.parametrize(
    "model",
    ["no-such-model", "claude-3-opus-20240229"],  # the second known, but no credential set
)
def test_unknown_or_unconfigured_model_is_model_not_found(seeded_catalog, monkeypatch, model):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ApiError) as raised:
        route(model=model)
    assert raised.value.code == "MODEL_NOT_FOUND"
    assert "model" in raised.value.details


def test_an_unconfigured_catalog_model_names_the_variable_that_enables_it(
    seeded_catalog, monkeypatch
):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ApiError) as raised:
        route(model="claude-3-opus-20240229")
    assert "ANTHROPIC_API_KEY is set" in raised.value.message


def test_an_unknown_quality_is_a_validation_error(seeded_catalog):
    with pytest.raises(ApiError) as raised:
        route(quality="premium")
    assert raised.value.code == "VALIDATION_ERROR"
    assert "quality" in raised.value.details


# --- generations ----------------------------------------------------------------------


async def run(request: GenerationRequest):
    generation = await start_generation(request)
    events = [event async for event in generation.events()]
    return generation, events


async def balance(tenant: Tenant) -> Decimal:
    return (await Tenant.objects.aget(pk=tenant.pk)).credit_balance


async def ledger_sum(tenant: Tenant) -> Decimal:
    amounts = await sync_to_async(list)(
        LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True)
    )
    return sum(amounts, Decimal(0))


@pytest.fixture
def tenant_chat(db, engine_writes):
    tenant = make_tenant(credits=100)
    return tenant, make_chat(tenant)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_complete_generation_charges_usage_and_stores_the_answer(tenant_chat):
    tenant, chat = tenant_chat
    before = await balance(tenant)
    _, events = await run(
        GenerationRequest(tenant=tenant, chat=chat, messages=[{"role": "user", "content": "hi"}])
    )
    *tokens, finished = events
    assert all(isinstance(t, TokenEvent) for t in tokens)
    assert isinstance(finished, FinishedEvent)
    assert finished.credits_charged > 0
    assert finished.credits_remaining == before - finished.credits_charged
    assert await balance(tenant) == finished.credits_remaining
    assert await ledger_sum(tenant) == await balance(tenant)
    stored = await Message.objects.aget(pk=finished.message_id)
    assert (stored.status, stored.content) == ("complete", finished.content)
    assert stored.completion_tokens == len(tokens)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_insufficient_credits_refuses_before_anything_is_stored(db):
    tenant = await sync_to_async(make_tenant)(credits=0)
    chat = await sync_to_async(make_chat)(tenant)
    with pytest.raises(ApiError) as raised:
        await start_generation(
            GenerationRequest(
                tenant=tenant, chat=chat, messages=[{"role": "user", "content": "hi"}]
            )
        )
    assert raised.value.code == "INSUFFICIENT_CREDITS"
    assert raised.value.status == 402
    assert not await Message.objects.filter(chat=chat).aexists()
    assert await balance(tenant) == 0
    assert await AuditRecord.objects.filter(tenant=tenant).acount() == 1  # it was checked


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_failure_mid_stream_charges_what_was_produced(tenant_chat):
    tenant, chat = tenant_chat
    before = await balance(tenant)
    generation, events = await run(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:fail-after=2] one two three four"}],
        )
    )
    *tokens, failed = events
    assert len(tokens) == 2 and isinstance(failed, ErrorEvent)
    assert (failed.error.code, failed.error.retryable) == ("LLM_CONNECTION_ERROR", True)
    assert failed.usage.completion_tokens > 0
    assert 0 < failed.credits_charged < generation.hold.amount
    assert await balance(tenant) == before - failed.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)
    stored = await Message.objects.aget(pk=failed.message_id)
    assert (stored.status, stored.content) == ("failed", failed.content)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_stalled_model_times_out(tenant_chat, settings):
    settings.LLM_TIMEOUT_SECONDS = 0.2
    tenant, chat = tenant_chat
    _, events = await run(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:stall-after=1] hello there"}],
        )
    )
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].error.code == "LLM_TIMEOUT"
    assert (await Message.objects.aget(pk=events[-1].message_id)).status == "failed"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_consumer_closing_early_stores_cancelled_and_settles(tenant_chat):
    tenant, chat = tenant_chat
    before = await balance(tenant)
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:tokens=100] go"}],
        )
    )
    stream = generation.events()
    seen = [await anext(stream) for _ in range(4)]
    await stream.aclose()
    assert generation.outcome.status == "cancelled"
    stored = await Message.objects.aget(pk=generation.message_id)
    assert stored.status == "cancelled"
    assert stored.content == "".join(t.text for t in seen)
    assert await balance(tenant) == before - generation.outcome.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_stop_ends_the_events_with_a_cancelled_finish_stored_and_settled(tenant_chat):
    tenant, chat = tenant_chat
    before = await balance(tenant)
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:tokens=100] go"}],
        )
    )
    events = []
    async for event in generation.events():
        events.append(event)
        if len(events) == 4:
            generation.stop()
    tokens, end = events[:-1], events[-1]
    assert len(tokens) == 4 and all(isinstance(t, TokenEvent) for t in tokens)
    assert isinstance(end, FinishedEvent)
    assert (end.status, end.finish_reason) == ("cancelled", "cancelled")
    assert end.content == "".join(t.text for t in tokens)
    stored = await Message.objects.aget(pk=generation.message_id)
    assert (stored.status, stored.content, stored.completion_tokens) == (
        "cancelled",
        end.content,
        4,
    )
    assert await balance(tenant) == before - end.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_stop_cuts_a_wait_on_the_model_short(tenant_chat):
    tenant, chat = tenant_chat
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:stall-after=2] hello there"}],
        )
    )
    events = []

    async def consume():
        async for event in generation.events():
            events.append(event)

    consuming = asyncio.ensure_future(consume())
    await apoll(lambda: len(events) >= 2)
    started = time.monotonic()
    generation.stop()
    await asyncio.wait_for(consuming, 5)
    assert time.monotonic() - started < 2  # not the model's timeout
    assert (events[-1].status, len(events)) == ("cancelled", 3)
    assert (await Message.objects.aget(pk=generation.message_id)).status == "cancelled"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_openai_compatible_upstream_over_http(tenant_chat, fresh_catalog):
    tenant, chat = tenant_chat
    async with FakeUpstream("tokens-7") as upstream:
        await LLMModel.objects.acreate(
            name="local-llm",
            provider="openai_compatible",
            upstream_model="served-model",
            base_url=upstream.openai_base_url,
            input_price_per_1k=Decimal(1),
            output_price_per_1k=Decimal(2),
        )
        _, events = await run(
            GenerationRequest(
                tenant=tenant,
                chat=chat,
                model="local-llm",
                messages=[
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello"},
                ],
            )
        )
        sent = upstream.requests[-1]
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    assert finished.content == expected_text(7)
    assert sent["model"] == "served-model"
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    # Usage as the upstream reported it, priced at the model's rates.
    assert finished.usage.completion_tokens == 7
    expected = (Decimal(finished.usage.prompt_tokens) * 1 + Decimal(7) * 2) / 1000
    assert finished.credits_charged == expected.quantize(Decimal("0.000001"))


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_caller_leaving_during_admission_gets_its_hold_back(tenant_chat, monkeypatch):
    """Cancelled while the database admits the request: the hold is released."""
    import asyncio

    from chats.engine import admission

    tenant, chat = tenant_chat
    before = await balance(tenant)
    admitted = asyncio.Event()
    loop = asyncio.get_running_loop()
    real_admit = admission._admit

    def slow_admit(*args):
        result = real_admit(*args)
        loop.call_soon_threadsafe(admitted.set)
        time.sleep(0.3)  # the caller gives up meanwhile
        return result

    monkeypatch.setattr(admission, "_admit", slow_admit)
    task = asyncio.ensure_future(
        start_generation(
            GenerationRequest(tenant=tenant, chat=chat, messages=[{"role": "user", "content": "x"}])
        )
    )
    await admitted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def given_back() -> bool:
        return await balance(tenant) == before

    await apoll(given_back, timeout=2.5)
    assert await ledger_sum(tenant) == before


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_upstream_refusal_before_any_token_is_not_charged(tenant_chat):
    tenant, chat = tenant_chat
    before = await balance(tenant)
    _, events = await run(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:error=429] hello"}],
        )
    )
    (failed,) = events
    assert isinstance(failed, ErrorEvent)
    assert (failed.error.code, failed.error.retryable) == ("LLM_PROVIDER_ERROR", True)
    assert failed.error.details == {"upstream_status": 429}
    assert failed.credits_charged == 0
    assert await balance(tenant) == before
    assert await ledger_sum(tenant) == before


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_generations_are_counted_in_the_metrics(tenant_chat):
    from chatproject import metrics

    tenant, chat = tenant_chat
    counter = metrics.GENERATIONS.labels(status="complete", cache="MISS")
    before = counter._value.get()
    await run(
        GenerationRequest(tenant=tenant, chat=chat, messages=[{"role": "user", "content": "m"}])
    )
    assert counter._value.get() == before + 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_chat_deleted_mid_stream_still_settles_the_hold(tenant_chat):
    from chats.models import Chat

    tenant, chat = tenant_chat
    before = await balance(tenant)
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "[demo:tokens=20][demo:delay=10] go"}],
        )
    )
    events = generation.events()
    await anext(events)
    await Chat.objects.filter(pk=chat.pk).adelete()
    rest = [event async for event in events]
    assert isinstance(rest[-1], FinishedEvent)
    assert generation.outcome.status == "complete"
    assert await balance(tenant) == before - rest[-1].credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)
    assert not await Message.objects.filter(pk=generation.message_id).aexists()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_last_event_does_not_wait_for_the_cache_but_the_stream_does(
    tenant_chat, monkeypatch
):
    tenant, chat = tenant_chat
    filling, release = asyncio.Event(), asyncio.Event()
    stored: list = []

    async def slow_cache_put(key, answer):
        filling.set()
        await release.wait()
        stored.append(answer)

    monkeypatch.setattr(response_cache, "cache_put", slow_cache_put)
    request = GenerationRequest(
        tenant=tenant, chat=chat, messages=[{"role": "user", "content": "cache me"}]
    )
    generation = await start_generation(request)
    events = generation.events()

    async def answer() -> FinishedEvent:
        async for event in events:
            if isinstance(event, FinishedEvent):
                return event

    event = await asyncio.wait_for(answer(), 5)
    # The answer is out before the fill begins...
    assert not filling.is_set()
    ending = asyncio.ensure_future(anext(events, None))
    await asyncio.wait_for(filling.wait(), 5)
    await asyncio.sleep(0.05)
    assert not ending.done()  # ...and the stream ends only once the answer is cached.
    assert stored == []
    release.set()
    assert await asyncio.wait_for(ending, 5) is None
    assert [answer.content for answer in stored] == [event.content]
    assert (await generation.finished()).status == "complete"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_failing_write_in_finalisation_still_stores_and_settles_once(
    tenant_chat, engine_writes, monkeypatch
):
    """The writes go out together first; when one fails, all are written again one by one
    and the failing one alone is skipped."""
    if engine_writes != "orm":
        pytest.skip("the ORM's own second try (the event loop's is the next test)")
    tenant, chat = tenant_chat
    before = await balance(tenant)
    attempts = []

    def failing_output_check(*, decision, text, **_):
        attempts.append(text)
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")  # fails in the database

    monkeypatch.setattr(gate, "governor_check_output", failing_output_check)
    _, events = await run(
        GenerationRequest(tenant=tenant, chat=chat, messages=[{"role": "user", "content": "hi"}])
    )
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    assert len(attempts) == 2  # together, then one by one
    stored = await Message.objects.aget(pk=finished.message_id)
    assert (stored.status, stored.content) == ("complete", finished.content)
    assert finished.credits_charged > 0
    assert await balance(tenant) == before - finished.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)
    settles = LedgerEntry.objects.filter(tenant=tenant, kind=LedgerEntry.Kind.SETTLE)
    assert await settles.acount() == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_writes_the_database_refuses_from_the_event_loop_go_through_the_orm(
    tenant_chat, engine_writes, monkeypatch
):
    """A transaction the database refuses for its data is rolled back whole on the event
    loop, and written again through the ORM: stored and settled once."""
    if engine_writes != "event loop":
        pytest.skip("the event loop's writes")
    tenant, chat = tenant_chat
    before = await balance(tenant)
    assessed = []

    def unstorable_findings(**kwargs):
        assessed.append(kwargs["text"])
        return {"note": "\x00"}  # jsonb refuses a NUL

    monkeypatch.setattr(gate, "governor_assess_output", unstorable_findings)
    generation, events = await run(
        GenerationRequest(tenant=tenant, chat=chat, messages=[{"role": "user", "content": "hi"}])
    )
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    assert len(assessed) == 1
    stored = await Message.objects.aget(pk=finished.message_id)
    assert (stored.status, stored.content) == ("complete", finished.content)
    record = await AuditRecord.objects.aget(pk=generation.decision.audit_id)
    assert record.completed_at is not None  # by the ORM's own output check
    assert finished.credits_charged > 0
    assert await balance(tenant) == before - finished.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)
    settles = LedgerEntry.objects.filter(tenant=tenant, kind=LedgerEntry.Kind.SETTLE)
    assert await settles.acount() == 1


def _opener(tenant: Tenant, key: str):
    from chats.services import chat_open

    return lambda: chat_open(tenant=tenant, key=key, user_id="u")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_chat_opened_by_a_refused_request_is_not_kept(db):
    tenant = await sync_to_async(make_tenant)(credits=0)
    request = GenerationRequest(
        tenant=tenant,
        chat_opener=_opener(tenant, "new"),
        messages=[{"role": "user", "content": "hi"}],
    )
    with pytest.raises(ApiError) as raised:
        await start_generation(request)
    assert raised.value.code == "INSUFFICIENT_CREDITS"
    assert not await Chat.objects.filter(tenant=tenant).aexists()
    assert not await Message.objects.filter(chat__tenant=tenant).aexists()
    assert await AuditRecord.objects.filter(tenant=tenant).acount() == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_refused_request_keeps_the_chat_it_found(tenant_chat):
    tenant, _ = tenant_chat
    first = GenerationRequest(
        tenant=tenant,
        chat_opener=_opener(tenant, "kept"),
        messages=[{"role": "user", "content": "hi"}],
    )
    generation = await start_generation(first)
    [event async for event in generation.events()]
    chat = generation.request.chat
    assert await Message.objects.filter(chat=chat).acount() == 2
    rejected = GenerationRequest(
        tenant=tenant,
        chat_opener=_opener(tenant, "kept"),
        messages=[{"role": "user", "content": "my key sk_live_a1B2c3D4e5F6g7H8i9J0kL"}],
    )
    with pytest.raises(ApiError) as raised:
        await start_generation(rejected)
    assert raised.value.code == "GOVERNOR_REJECTED"
    assert rejected.chat.pk == chat.pk
    assert await Message.objects.filter(chat=chat).acount() == 2  # as it was


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_rate_limited_request_writes_nothing(db, settings):
    settings.REDIS_URL = ""
    store.reset_memory_store()
    tenant = await sync_to_async(make_tenant)(plan="free", credits=100)
    chat = await sync_to_async(make_chat)(tenant)
    await sync_to_async(policy_for_tenant)(tenant=tenant)  # cached: evaluated meanwhile
    outcomes = []
    for i in range(25):  # the free plan's burst is 20
        request = GenerationRequest(
            tenant=tenant, chat=chat, messages=[{"role": "user", "content": f"hi {i}"}]
        )
        try:
            generation = await start_generation(request)
            [event async for event in generation.events()]
            outcomes.append("answered")
        except ApiError as error:
            outcomes.append(error.code)
    assert outcomes.count("answered") == 20
    assert outcomes.count("RATE_LIMITED") == 5
    assert await AuditRecord.objects.filter(tenant=tenant).acount() == 20
    assert await Message.objects.filter(chat=chat, role="user").acount() == 20


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_answer_the_database_cannot_take_is_given_up_cleanly(tenant_chat, monkeypatch):
    """The database stays down while the answer is stored: the client is told so, and
    finalising gives up (leaving the hold to the sweeper) instead of failing."""
    tenant, chat = tenant_chat

    async def database_down(*args):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(finalisation, "write_final", database_down)
    generation, events = await run(
        GenerationRequest(tenant=tenant, chat=chat, messages=[{"role": "user", "content": "hi"}])
    )
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].error.code == "SERVICE_UNAVAILABLE"
    assert await generation._finishing is None


# --- the seams a transport's own logic plugs into -----------------------------------------


class _Prompt:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.system_prompt = "You write specs."
        self.client_parts = [("user_name", "Ada")]
        self.folded = [("knowledge base: A.md", "Queues hold jobs.")]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_system_prompt_is_built_for_what_the_model_leaves_and_leads(tenant_chat):
    tenant, chat = tenant_chat
    conversation = [{"role": "user", "content": "hi " * 50}]
    generation, events = await run(
        GenerationRequest(tenant=tenant, chat=chat, messages=conversation, system_prompt=_Prompt)
    )
    prompt = generation.system_prompt
    model = generation.model
    left = model.context_window - model.max_output_tokens - estimate_prompt_tokens(conversation)
    assert prompt.budget == left
    assert generation.messages[0] == {"role": "system", "content": "You write specs."}
    assert generation.request.trusted_messages == 1
    assert generation.request.folded == prompt.folded
    assert generation.request.client_context == prompt.client_parts
    assert isinstance(events[-1], FinishedEvent)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_kept_answers_are_reported_on_the_finished_event(tenant_chat):
    tenant, chat = tenant_chat
    kept: list[str] = []

    def keep(content: str) -> dict:
        kept.append(content)
        return {"saved": True}

    _, events = await run(
        GenerationRequest(
            tenant=tenant, chat=chat, messages=[{"role": "user", "content": "hi"}], keep_answer=keep
        )
    )
    finished = events[-1]
    assert finished.kept == {"saved": True}
    assert kept == [finished.content]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_failing_keep_answer_still_delivers_and_settles_the_answer(tenant_chat):
    tenant, chat = tenant_chat

    def broken(content: str) -> dict:
        raise RuntimeError("elsewhere is down")

    _, events = await run(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            messages=[{"role": "user", "content": "hi"}],
            keep_answer=broken,
        )
    )
    finished = events[-1]
    assert isinstance(finished, FinishedEvent) and finished.kept is None
    stored = await Message.objects.aget(pk=finished.message_id)
    assert (stored.status, stored.content) == ("complete", finished.content)
    assert await ledger_sum(tenant) == await balance(tenant)
