"""The cap on a tenant's concurrent generations: in the engine (every transport's path),
in Redis when configured, given back in every ending, lapsing when nobody renews it."""

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from billing import limits, store
from billing.models import Plan
from billing.services import credits_top_up
from chatproject.errors import ApiError
from chats import checkpoints
from chats.engine import GenerationRequest, start_generation
from tests.factories import make_chat, make_tenant
from tests.polling import apoll

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

LONG = [{"role": "user", "content": "[demo:tokens=100] go"}]


@pytest.fixture(autouse=True)
def _fresh_slots():
    store.reset_memory_store()


@pytest.fixture
def capped(db):
    """A tenant whose plan runs two generations at once."""
    make_tenant()  # the default plans
    plan = Plan.objects.create(name="two-at-once", display_name="Two", max_concurrent_generations=2)
    tenant = make_tenant(plan=plan.name, credits=100)
    return tenant, make_chat(tenant)


async def admit(tenant, chat=None, messages=LONG):
    return await start_generation(GenerationRequest(tenant=tenant, chat=chat, messages=messages))


async def admitted(tenant, messages=LONG):
    """A generation, or None while every slot of the tenant is taken."""
    try:
        return await admit(tenant, messages=messages)
    except ApiError as error:
        if error.code != "CONCURRENCY_LIMIT":
            raise
        return None


async def test_the_default_plan_runs_fifty_at_once(db):
    tenant = await sync_to_async(make_tenant)()
    assert tenant.plan.max_concurrent_generations == 50


async def test_a_third_generation_is_refused_until_one_ends(capped):
    tenant, chat = capped
    first, second = await admit(tenant, chat), await admit(tenant)
    streams = [first.events(), second.events()]
    for stream in streams:
        await anext(stream)
    with pytest.raises(ApiError) as refused:
        await admit(tenant)
    error = refused.value
    assert (error.code, error.status, error.retryable) == ("CONCURRENCY_LIMIT", 429, True)
    assert int(error.headers["Retry-After"]) >= 1
    assert error.details["limit"] == 2
    async for _ in streams[0]:  # the first one completes: its slot comes back
        pass
    third = await apoll(lambda: admitted(tenant))  # (given back in the background)
    await streams[1].aclose()  # a cancel gives its slot back too
    fourth = await apoll(lambda: admitted(tenant))
    for generation in (third, fourth):
        await generation.events().aclose()


async def test_a_refused_admission_gives_its_slot_back(capped):
    assert capped  # the plan
    broke = await sync_to_async(make_tenant)(plan="two-at-once")  # no credits
    for _ in range(3):
        with pytest.raises(ApiError) as refused:
            await admit(broke)
        assert refused.value.code == "INSUFFICIENT_CREDITS"
    await sync_to_async(credits_top_up)(tenant=broke, amount=Decimal(10))
    # Both slots are free (once given back, in the background).
    generations = [await apoll(lambda: admitted(broke)), await apoll(lambda: admitted(broke))]
    for generation in generations:
        await generation.events().aclose()


async def test_a_request_refused_a_slot_leaves_no_claim_on_its_answer(capped):
    tenant, _ = capped
    running = [
        await admit(tenant, messages=[{"role": "user", "content": f"[demo:tokens=100] {n}"}])
        for n in range(2)
    ]
    streams = [generation.events() for generation in running]
    for stream in streams:
        await anext(stream)
    question = [{"role": "user", "content": "[demo:tokens=3] asked while the cap is full"}]
    with pytest.raises(ApiError) as refused:
        await admit(tenant, messages=question)
    assert refused.value.code == "CONCURRENCY_LIMIT"
    for stream in streams:
        await stream.aclose()
    # The same question again generates its answer: it follows no log nobody writes.
    generation = await apoll(lambda: admitted(tenant, question))
    assert (generation.joined, generation.claimed) == (None, True)
    await generation.events().aclose()


async def test_a_slot_nobody_renews_lapses(capped, settings):
    tenant, _ = capped
    settings.HOLD_LEASE_SECONDS = 0.5
    settings.STREAM_CHECKPOINT_SECONDS = 0.1
    # Two slots taken by a process that then died: never given back, never renewed.
    await limits.generation_admit(tenant, "dead-1")
    await limits.generation_admit(tenant, "dead-2")
    with pytest.raises(ApiError):
        await admit(tenant)
    await asyncio.sleep(0.6)
    generation = await admit(tenant)
    await generation.events().aclose()


async def test_running_generations_keep_their_slots_past_the_lease(capped, settings):
    tenant, _ = capped
    settings.HOLD_LEASE_SECONDS = 0.5
    first, second = await admit(tenant), await admit(tenant)
    streams = [first.events(), second.events()]
    for stream in streams:
        await anext(stream)
    for _ in range(4):  # past the lease, renewed by the process's ticks
        await asyncio.sleep(0.2)
        await checkpoints.tick()
    with pytest.raises(ApiError) as refused:
        await admit(tenant)
    assert refused.value.code == "CONCURRENCY_LIMIT"
    for stream in streams:
        await stream.aclose()


@pytest.mark.skipif(not settings.REDIS_URL, reason="the cross-process claim is Redis's")
async def test_slots_are_shared_through_redis(capped):
    tenant, _ = capped
    first = await admit(tenant)
    # Another process's generation: its slot is in Redis, not in this process's memory.
    await limits.generation_admit(tenant, "elsewhere")
    store.reset_memory_store()
    with pytest.raises(ApiError):
        await admit(tenant)
    await limits.generation_release(tenant.pk, "elsewhere")
    second = await admit(tenant)
    for generation in (first, second):
        await generation.events().aclose()
