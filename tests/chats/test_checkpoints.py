"""Leases and checkpoints of running generations: what a process that dies leaves behind,
and what the sweeper makes of it."""

from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from billing import pricing
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.sweeper import holds_sweep
from chats import checkpoints
from chats.engine import GenerationRequest, start_generation
from chats.models import Message
from tests.factories import make_chat, make_tenant

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

LONG = [{"role": "user", "content": "[demo:tokens=100] go"}]


@pytest.fixture
def tenant_chat(db):
    tenant = make_tenant(credits=100)
    return tenant, make_chat(tenant)


async def books_balance(tenant: Tenant) -> bool:
    balance = (await Tenant.objects.aget(pk=tenant.pk)).credit_balance
    total = Decimal(0)
    async for amount in LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True):
        total += amount
    return total == balance


async def holds_sweep_async(**kwargs):
    return await sync_to_async(holds_sweep)(**kwargs)


async def lapse(hold_id: int, seconds: float = 120) -> None:
    """As if the process had stopped renewing the hold ``seconds`` ago."""
    await CreditHold.objects.filter(pk=hold_id).aupdate(
        lease_expires_at=timezone.now() - timedelta(seconds=seconds)
    )


async def test_a_running_answer_is_checkpointed_then_finalised(tenant_chat):
    tenant, chat = tenant_chat
    generation = await start_generation(GenerationRequest(tenant=tenant, chat=chat, messages=LONG))
    stream = generation.events()
    first = [(await anext(stream)).text for _ in range(5)]
    await checkpoints.tick()
    stored = await Message.objects.aget(pk=generation.message_id)
    assert (stored.status, stored.content, stored.completion_tokens) == (
        "streaming",
        "".join(first),
        5,
    )
    more = [(await anext(stream)).text for _ in range(3)]
    await checkpoints.tick()  # the next checkpoint updates the same row
    stored = await Message.objects.aget(pk=generation.message_id)
    assert (stored.content, stored.completion_tokens) == ("".join(first + more), 8)
    async for _ in stream:
        pass
    stored = await Message.objects.aget(pk=generation.message_id)
    assert (stored.status, stored.completion_tokens) == ("complete", 100)
    assert await Message.objects.filter(chat=chat, role="assistant").acount() == 1
    hold = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    assert (hold.status, hold.message_id) == ("settled", generation.message_id)
    assert await books_balance(tenant)


async def test_a_tick_renews_the_leases_of_running_generations(tenant_chat, settings):
    settings.HOLD_LEASE_SECONDS = 30
    tenant, chat = tenant_chat
    generation = await start_generation(GenerationRequest(tenant=tenant, chat=chat, messages=LONG))
    stream = generation.events()
    await anext(stream)
    await lapse(generation.hold.hold_id, 5)
    await checkpoints.tick()
    hold = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    assert hold.lease_expires_at > timezone.now() + timedelta(seconds=25)
    assert (await holds_sweep_async(older_than_seconds=0)).closed == 0
    await stream.aclose()
    assert generation.outcome.status == "cancelled"


async def test_a_dead_process_answer_is_failed_with_its_checkpoint_and_settled(tenant_chat):
    tenant, chat = tenant_chat
    generation = await start_generation(GenerationRequest(tenant=tenant, chat=chat, messages=LONG))
    stream = generation.events()
    first = [(await anext(stream)).text for _ in range(7)]
    await checkpoints.tick()
    # The process dies here: nothing finalises the generation or renews its lease.
    await checkpoints.leave(generation)
    await lapse(generation.hold.hold_id)
    sweep = await holds_sweep_async()
    assert (sweep.released, sweep.settled) == (0, 1)
    stored = await Message.objects.aget(pk=generation.message_id)
    assert (stored.status, stored.content, stored.completion_tokens) == (
        "failed",
        "".join(first),
        7,
    )
    hold = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    expected = pricing.cost(
        input_price_per_1k=generation.model.input_price_per_1k,
        output_price_per_1k=generation.model.output_price_per_1k,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=7,
    )
    assert (hold.status, hold.charged, hold.completion_tokens) == ("settled", expected, 7)
    assert await books_balance(tenant)


async def test_a_stateless_request_is_checkpointed_on_its_hold(tenant_chat):
    tenant, _ = tenant_chat
    generation = await start_generation(GenerationRequest(tenant=tenant, messages=LONG))
    stream = generation.events()
    for _ in range(4):
        await anext(stream)
    await checkpoints.tick()
    hold = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    assert (hold.status, hold.message_id, hold.completion_tokens) == ("open", None, 4)
    await stream.aclose()


async def test_a_generation_finishing_late_after_the_sweep_is_told_what_was_charged(tenant_chat):
    tenant, chat = tenant_chat
    generation = await start_generation(GenerationRequest(tenant=tenant, chat=chat, messages=LONG))
    stream = generation.events()
    for _ in range(3):
        await anext(stream)
    await checkpoints.tick()
    await lapse(generation.hold.hold_id)  # the process stalled past its lease
    await holds_sweep_async()
    swept = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    events = [event async for event in stream]
    finished = events[-1]
    assert finished.credits_charged == swept.charged  # not the whole answer's price
    assert finished.credits_remaining == (await Tenant.objects.aget(pk=tenant.pk)).credit_balance
    assert await books_balance(tenant)


async def test_an_answer_cut_short_is_charged_for_the_tokens_that_went_out(tenant_chat):
    tenant, chat = tenant_chat
    generation = await start_generation(GenerationRequest(tenant=tenant, chat=chat, messages=LONG))
    stream = generation.events()
    for _ in range(34):
        await anext(stream)
    await stream.aclose()
    outcome = generation.outcome
    assert (outcome.status, outcome.usage.completion_tokens) == ("cancelled", 34)
    stored = await Message.objects.aget(pk=generation.message_id)
    assert stored.completion_tokens == 34
    hold = await CreditHold.objects.aget(pk=generation.hold.hold_id)
    assert (hold.completion_tokens, hold.charged) == (34, outcome.credits_charged)
    assert outcome.credits_charged == pricing.cost(
        input_price_per_1k=generation.model.input_price_per_1k,
        output_price_per_1k=generation.model.output_price_per_1k,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=34,
    )
