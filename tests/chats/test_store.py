"""The engine's writes from the event loop (chats.engine.store), on real PostgreSQL: what
admission and finalisation store there is what the ORM path stores, refusals included."""

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import connection

from billing import credits
from billing.models import CreditHold, LedgerEntry
from chatproject import async_db
from chatproject.errors import ApiError
from chats.engine import FinishedEvent, GenerationRequest, start_generation, store
from chats.models import Message
from governor.models import AuditRecord
from governor.policies import policy_for_tenant
from tests.chats.test_engine import balance, ledger_sum, run
from tests.factories import make_chat, make_tenant

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the async pool is PostgreSQL's"),
]


@pytest_asyncio.fixture
async def writes(settings, monkeypatch):
    """Turns the pool on, and counts the phases written from the event loop."""
    settings.ASYNC_DATABASE_POOL = True
    written = {"admit": 0, "finalise": 0}

    def counting(phase: str):
        write = getattr(store, phase)

        def counted(*args, **kwargs):
            written[phase] += 1
            return write(*args, **kwargs)

        return counted

    for phase in written:
        monkeypatch.setattr(store, phase, counting(phase))
    yield written
    await async_db.close()


async def account(credits: int = 100):
    tenant = await sync_to_async(make_tenant)(credits=credits)
    chat = await sync_to_async(make_chat)(tenant)
    await sync_to_async(policy_for_tenant)(tenant=tenant)  # cached, as a busy server has it
    return tenant, chat


def ask(tenant, chat, content: str = "hi") -> GenerationRequest:
    return GenerationRequest(
        tenant=tenant, chat=chat, messages=[{"role": "user", "content": content}]
    )


async def test_an_exchange_is_admitted_and_finalised_from_the_event_loop(writes):
    tenant, chat = await account()
    before = await balance(tenant)
    generation, events = await run(ask(tenant, chat))
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    assert writes == {"admit": 1, "finalise": 1}
    stored = [m async for m in Message.objects.filter(chat=chat).order_by("created_at")]
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[0].content == "hi"
    assert stored[1].content == finished.content and stored[1].completion_tokens > 0
    record = await AuditRecord.objects.aget(pk=generation.decision.audit_id)
    assert record.approved and record.completed_at is not None
    assert record.output_findings is not None
    hold = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    assert (hold.status, hold.charged) == ("settled", finished.credits_charged)
    assert hold.message_id == generation.message_id
    assert finished.credits_charged > 0
    assert finished.credits_remaining == await balance(tenant) == before - finished.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)


async def test_a_rejected_request_stores_its_audit_record_alone(writes):
    tenant, chat = await account()
    with pytest.raises(ApiError) as raised:
        await start_generation(ask(tenant, chat, "my key sk_live_a1B2c3D4e5F6g7H8i9J0kL"))
    assert raised.value.code == "GOVERNOR_REJECTED"
    assert writes["admit"] == 1
    record = await AuditRecord.objects.aget(tenant=tenant)
    assert str(record.pk) == raised.value.details["audit_id"] and not record.approved
    assert not await Message.objects.filter(chat=chat).aexists()
    assert not await CreditHold.objects.filter(tenant=tenant).aexists()


async def test_a_hold_the_balance_cannot_cover_stores_no_message(writes):
    tenant, chat = await account(credits=0)
    with pytest.raises(ApiError) as raised:
        await start_generation(ask(tenant, chat))
    assert raised.value.code == "INSUFFICIENT_CREDITS"
    assert raised.value.details["balance"] == "0.000000"
    assert writes["admit"] == 1
    assert not await Message.objects.filter(chat=chat).aexists()
    assert await AuditRecord.objects.filter(tenant=tenant).acount() == 1  # it was checked
    assert await balance(tenant) == 0


async def test_a_hold_closed_before_settles_at_what_the_ledger_took(writes):
    tenant, chat = await account()
    generation = await start_generation(ask(tenant, chat))
    # The sweeper closes the hold meanwhile (its lease lapsed, say): nothing charged.
    released = await sync_to_async(credits.credits_release)(hold=generation.hold)
    events = [event async for event in generation.events()]
    finished = events[-1]
    assert writes["finalise"] == 1
    assert (finished.credits_charged, finished.credits_remaining) == (0, released)
    assert await ledger_sum(tenant) == await balance(tenant) == 100
    settles = LedgerEntry.objects.filter(tenant=tenant, kind=LedgerEntry.Kind.SETTLE)
    assert not await settles.aexists()


async def test_an_answer_whose_chat_was_deleted_still_settles(writes):
    tenant, chat = await account()
    generation = await start_generation(ask(tenant, chat))
    await chat.adelete()
    events = [event async for event in generation.events()]
    finished = events[-1]
    assert writes["finalise"] == 1
    assert not await Message.objects.filter(pk=generation.message_id).aexists()
    assert finished.credits_charged > 0
    assert await balance(tenant) == 100 - finished.credits_charged
    assert await ledger_sum(tenant) == await balance(tenant)
