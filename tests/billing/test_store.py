"""The billing store's one interface, in both implementations, and Redis going away."""

import asyncio
import uuid

import pytest
from django.conf import settings as django_settings

from billing.gcra import Rate
from billing.store import (
    UNTRIED,
    ClaimOnMiss,
    MemoryStore,
    RedisStore,
    StoreUnavailable,
    get_store,
    memory_store,
)

pytestmark = pytest.mark.asyncio

PER_MINUTE = Rate(interval_us=60_000_000, burst=3)


def fresh(what: str) -> str:
    return f"billing:test:{what}:{uuid.uuid4().hex}"


def as_text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value  # Redis answers bytes


async def text(store, key: str) -> str | None:
    return as_text(await store.get(key))


async def test_the_configuration_chooses_the_implementation(memory_or_redis):
    expected = RedisStore if memory_or_redis == "redis" else MemoryStore
    assert isinstance(get_store(), expected)
    assert get_store() is get_store()


async def test_values_are_added_once_replaced_and_deleted(memory_or_redis):
    store, key = get_store(), fresh("value")
    assert await store.add(key, "first", 60)
    assert not await store.add(key, "second", 60)
    assert await text(store, key) == "first"
    await store.put(key, "third", 60)
    assert await text(store, key) == "third"
    await store.delete(key)
    assert await store.get(key) is None
    assert await store.add(key, "again", 60)
    await store.delete(key)


async def test_values_expire(memory_or_redis):
    store, key = get_store(), fresh("expiring")
    await store.put(key, "soon gone", 0.05)
    await asyncio.sleep(0.2)
    assert await store.get(key) is None


async def test_an_allowance_is_spent_then_refused_and_reads_only_when_admitted(memory_or_redis):
    store, key, cached = get_store(), fresh("bucket"), fresh("cached")
    await store.put(cached, "answer", 60)
    decisions = [await store.consume(key, PER_MINUTE, read=cached) for _ in range(4)]
    assert [d.remaining for d, _ in decisions[:3]] == [2, 1, 0]
    assert {as_text(value) for _, value in decisions[:3]} == {"answer"}
    refused, value = decisions[3]
    assert not refused.allowed and value is None
    assert 59_000_000 <= refused.retry_after_us <= 60_000_000
    assert not store.consume_sync(key, PER_MINUTE).allowed  # one allowance, sync or not
    unlimited, value = await store.consume(fresh("unlimited"), None, read=cached)
    assert (unlimited, as_text(value)) == (None, "answer")


async def test_a_miss_claims_in_the_same_call_and_a_hit_or_a_refusal_claims_nothing(
    memory_or_redis,
):
    store, bucket, cached = get_store(), fresh("bucket"), fresh("cached")
    claims = [ClaimOnMiss(fresh("claim"), f"log-{n}", 60_000) for n in range(5)]
    first, second, on_hit, refused, unlimited = claims
    second.key = first.key  # an identical request, arriving while the first runs
    await store.consume(bucket, PER_MINUTE, read=cached, claim=first)
    await store.consume(bucket, PER_MINUTE, read=cached, claim=second)
    await store.put(cached, "answer", 60)
    _, value = await store.consume(bucket, PER_MINUTE, read=cached, claim=on_hit)
    assert as_text(value) == "answer"
    decision, _ = await store.consume(bucket, PER_MINUTE, read=fresh("miss"), claim=refused)
    assert not decision.allowed
    assert await store.consume(fresh("bucket"), None, read=fresh("miss"), claim=unlimited) == (
        None,
        None,
    )
    assert (on_hit.held, refused.held) == (UNTRIED, UNTRIED)
    for claim in (on_hit, refused):
        assert await store.get(claim.key) is None
    if memory_or_redis != "redis":  # in-process claims are the stream log's to make
        assert (first.held, second.held, unlimited.held) == (UNTRIED,) * 3
        return
    # Claimed by the first, found held by the second; an unlimited plan's miss claims too.
    assert (first.held, second.held, unlimited.held) == (None, "log-0", None)
    assert (await text(store, first.key), await text(store, unlimited.key)) == ("log-0", "log-4")
    for claim in (first, unlimited):
        await store.delete(claim.key)


async def test_slots_up_to_the_limit_and_renewals_past_it(memory_or_redis):
    store, key = get_store(), fresh("slots")
    assert await store.slot_take(key, "a", 1, 60)
    assert await store.slot_take(key, "a", 1, 60)  # held: extended, not taken twice
    assert not await store.slot_take(key, "b", 1, 60)
    await store.slots_renew([(key, "b")], 60)  # a renewal never refuses
    await store.slot_give_back(key, "a")
    assert not await store.slot_take(key, "c", 1, 60)  # "b" holds the one slot now
    await store.slot_give_back(key, "b")
    await store.slot_give_back(key, "never held")
    assert await store.slot_take(key, "c", 1, 60)
    await store.slot_give_back(key, "c")


async def test_while_redis_is_down_values_fail_and_limits_hold_in_this_process(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    store, key = get_store(), fresh("outage")
    assert isinstance(store, RedisStore)
    for call in (store.get(key), store.put(key, "x", 60), store.add(key, "x", 60)):
        with pytest.raises(StoreUnavailable):
            await call
    with pytest.raises(StoreUnavailable):
        await store.delete(key)
    decisions = [(await store.consume(key, PER_MINUTE, read=key))[0] for _ in range(3)]
    assert [d.allowed for d in decisions] == [True] * 3
    assert not store.consume_sync(key, PER_MINUTE).allowed
    assert await store.slot_take(key, "a", 1, 60)
    assert not await store.slot_take(key, "b", 1, 60)
    await store.slot_give_back(key, "a")  # given back in this process too
    assert await store.slot_take(key, "b", 1, 60)
    assert await store.consume(key, None, read=key) == (None, None)
    claim = ClaimOnMiss(fresh("claim"), "log", 60_000)
    await store.consume(fresh("bucket"), PER_MINUTE, read=key, claim=claim)
    assert claim.held == UNTRIED  # its caller claims on its own (and fails the same way)


async def test_more_commands_than_connections_wait_for_one(settings):
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    settings.REDIS_MAX_CONNECTIONS = 2  # this test's event loop gets a client of its own
    store, key = get_store(), fresh("crowd")
    rate = Rate(interval_us=60_000_000, burst=50)
    replies = await asyncio.gather(*(store.consume(key, rate) for _ in range(200)))
    assert sum(decision.allowed for decision, _ in replies) == 50
    # None of them took the wait for an outage and decided in this process instead.
    assert memory_store().consume_sync(key, rate).remaining == 49
