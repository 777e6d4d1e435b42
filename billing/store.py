"""Billing's shared state: request allowances, slot leases and stored answers.

One interface, :class:`Store`, two implementations chosen once per configuration
(:func:`get_store`): :class:`RedisStore` with ``REDIS_URL`` (shared by every server
process; each decision atomic in Redis and timed by Redis's own clock), else
:class:`MemoryStore` (this process's memory).

- allowances: :meth:`~Store.consume` takes one request from a GCRA bucket
  (:func:`billing.gcra.gcra`) and can read a key in the same call (and, when that read
  finds nothing, claim another: :class:`ClaimOnMiss`);
- slot leases: a set of members, each lapsing ``ttl`` seconds after it was last taken, at
  most ``limit`` of them (WebSocket connections, running generations);
- stored values: get, put, add (only if absent) and delete, each with a time to live.

While Redis is down the limits are not dropped: the Redis store decides allowances and
slots in this process's memory instead (so N processes admit up to N times a plan's
allowance until Redis is back) and logs the failure. A Redis outage should not take the
whole API down with it, nor open it to floods. Stored values raise
:class:`StoreUnavailable` then: what to do without them is the caller's to say.
"""

import asyncio
import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import redis
from django.core.cache.backends.locmem import LocMemCache

from billing.gcra import MICROS, Decision, Rate, gcra
from chatproject.backends import RedisOrMemory
from chatproject.redis import get_sync_redis
from chatproject.redis_multiplexed import Script, get_multiplexed

logger = logging.getLogger(__name__)

Value = str | bytes


class StoreUnavailable(Exception):
    """The store could not be reached (Redis is down)."""


UNTRIED: Final = "untried"  # ClaimOnMiss.held before (or without) a claim


@dataclass
class ClaimOnMiss:
    """A key to set to ``value`` for ``ttl_ms``, unless it holds a value already, in the
    same call as :meth:`Store.consume`'s read, for an admitted request whose read found
    nothing (a response cache miss claiming its in-flight answer). The store sets
    ``held``: None when it claimed the key, else what the key held; it stays
    :data:`UNTRIED` when nothing was claimed (a refusal, a hit, Redis down, or a store
    that claims elsewhere), and the caller claims on its own if it still wants to."""

    key: str
    value: str
    ttl_ms: int
    held: str | None = UNTRIED


class Store(Protocol):
    async def consume(
        self,
        key: str,
        rate: Rate | None,
        *,
        read: str | None = None,
        claim: ClaimOnMiss | None = None,
    ) -> tuple[Decision | None, Value | None]:
        """Take one from the bucket at ``key`` (no bucket, no decision: ``rate`` None is
        unlimited); with ``read``, also the value stored there for an admitted request
        (None when absent, or when it could not be read), and with ``claim`` too, that
        claim when the read found nothing (see :class:`ClaimOnMiss`)."""

    def consume_sync(self, key: str, rate: Rate) -> Decision:
        """:meth:`consume`, for sync callers."""

    async def slot_take(self, key: str, member: str, limit: int, ttl: float) -> bool:
        """Take (or extend, when held) ``member``'s slot in the set at ``key`` for
        ``ttl`` seconds; False when ``limit`` others hold one."""

    async def slots_renew(self, slots: list[tuple[str, str]], ttl: float) -> None:
        """Extend the ``(key, member)`` slots, taken or not, whatever the limit."""

    async def slot_give_back(self, key: str, member: str) -> None:
        """Give a slot back; one not held is harmless."""

    async def get(self, key: str) -> Value | None: ...

    async def put(self, key: str, value: str, ttl: float) -> None: ...

    async def add(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` only if ``key`` holds nothing; False when it does."""

    async def delete(self, key: str) -> None: ...


_NO_CAP = 2**31  # a renewal never refuses a slot, even one that lapsed


class MemoryStore:
    """This process's state: safe from threads and from coroutines (the lock is never
    held across an ``await``). ``clock`` returns seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tats: dict[str, int] = {}
        self._slots: dict[str, dict[str, float]] = {}
        # Django's in-process cache keeps the stored values (expiry, culling, threads);
        # a name of its own, so a fresh store starts empty.
        self._values = LocMemCache(f"billing-{uuid.uuid4().hex}", {})

    def consume_sync(self, key: str, rate: Rate) -> Decision:
        with self._lock:
            now_us = int(self.clock() * MICROS)
            decision, new_tat = gcra(tat_us=self._tats.get(key), now_us=now_us, rate=rate)
            if new_tat is not None:
                self._tats[key] = new_tat
            if len(self._tats) > 10_000:  # forget full buckets: they equal no entry
                self._tats = {k: v for k, v in self._tats.items() if v > now_us}
            return decision

    def forget(self, key: str) -> None:
        """Drop the bucket at ``key`` (its owner is gone)."""
        with self._lock:
            self._tats.pop(key, None)

    async def consume(
        self,
        key: str,
        rate: Rate | None,
        *,
        read: str | None = None,
        claim: ClaimOnMiss | None = None,  # in-process claims are the stream log's own
    ) -> tuple[Decision | None, Value | None]:
        decision = None if rate is None else self.consume_sync(key, rate)
        admitted = decision is None or decision.allowed
        return decision, (self._values.get(read) if read is not None and admitted else None)

    def slot_take_sync(self, key: str, member: str, limit: int, ttl: float) -> bool:
        with self._lock:
            now = self.clock()
            slots = self._slots.setdefault(key, {})
            for lapsed in [m for m, expiry in slots.items() if expiry <= now]:
                del slots[lapsed]
            if member not in slots and len(slots) >= limit:
                return False
            slots[member] = now + ttl
            return True

    async def slot_take(self, key: str, member: str, limit: int, ttl: float) -> bool:
        return self.slot_take_sync(key, member, limit, ttl)

    async def slots_renew(self, slots: list[tuple[str, str]], ttl: float) -> None:
        for key, member in slots:
            self.slot_take_sync(key, member, _NO_CAP, ttl)

    def slot_give_back_sync(self, key: str, member: str) -> None:
        with self._lock:
            held = self._slots.get(key)
            if held is not None:
                held.pop(member, None)
                if not held:
                    del self._slots[key]

    async def slot_give_back(self, key: str, member: str) -> None:
        self.slot_give_back_sync(key, member)

    # The in-process cache never blocks: no hop to a worker thread for it.
    async def get(self, key: str) -> Value | None:
        return self._values.get(key)

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._values.set(key, value, ttl)

    async def add(self, key: str, value: str, ttl: float) -> bool:
        return self._values.add(key, value, ttl)

    async def delete(self, key: str) -> None:
        self._values.delete(key)


# --- Redis ------------------------------------------------------------------------------

# KEYS[1]: the bucket's arrival-time key. ARGV: interval (µs), burst.
# KEYS[2], optional: a key to read for an admitted request, returned fifth, so a request's
# two lookups (its allowance and its cached answer) cost one round trip.
# KEYS[3], optional, with ARGV[3] and ARGV[4] (ms): a key to claim with that value when
# the read found nothing (SET NX GET: what it held, returned seventh, false if claimed);
# the sixth is 1 when it was tried.
# The script is billing.gcra.gcra, line for line, then the read and the claim.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * tonumber(ARGV[2])
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
local read = false
if KEYS[2] then read = redis.call('GET', KEYS[2]) end
local tried, held = 0, false
if KEYS[3] and not read then
  tried = 1
  held = redis.call('SET', KEYS[3], ARGV[3], 'NX', 'GET', 'PX', ARGV[4])
end
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now, read, tried, held}
"""
_GCRA = Script(_GCRA_LUA)

# For an unlimited plan, the read and the claim of _GCRA alone (its KEYS[2] and KEYS[3] as
# KEYS[1] and KEYS[2], ARGV[3] and ARGV[4] as ARGV[1] and ARGV[2]): its reply's last three.
_READ_OR_CLAIM = Script("""
local read = redis.call('GET', KEYS[1])
if read then return {read, 0, false} end
return {false, 1, redis.call('SET', KEYS[2], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])}
""")

# KEYS[1]: a sorted set of members scored by their expiry, so the slots of a crashed
# process lapse by themselves. ARGV: member, limit, ttl (ms). Taking a slot the member
# holds already extends it (that is also the refresh).
_SLOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', expiry), ARGV[1])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], newest[2])
return 1
"""
_SLOT = Script(_SLOT_LUA)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _decision(reply) -> Decision:
    allowed, remaining, retry_after, reset_after = (int(x) for x in reply[:4])
    return Decision(bool(allowed), remaining, retry_after, reset_after)


class RedisStore:
    """The state in Redis: async callers through the loop's multiplexed client
    (:mod:`chatproject.redis_multiplexed`), sync ones through the shared blocking client
    (whose pool is the one limit on this process's blocking connections: callers wait
    there for a free one rather than fail, so a burst is not mistaken for an outage)."""

    def __init__(self) -> None:
        self._sync_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _sync_script(self, client, source: str):
        scripts = self._sync_scripts.get(client)
        if scripts is None:
            scripts = self._sync_scripts[client] = {}
        if source not in scripts:
            scripts[source] = client.register_script(source)
        return scripts[source]

    @staticmethod
    def _in_memory(what: str) -> MemoryStore:
        logger.warning("%s: Redis unavailable, decided in this process", what, exc_info=True)
        return memory_store()

    async def consume(
        self,
        key: str,
        rate: Rate | None,
        *,
        read: str | None = None,
        claim: ClaimOnMiss | None = None,
    ) -> tuple[Decision | None, Value | None]:
        if read is None:
            claim = None  # a claim goes with a read that misses
        if rate is None and claim is None:  # nothing to count: at most a read
            return None, None if read is None else await self._read(read)
        keys: list[str] = [] if rate is None else [key]
        args: list[int | str] = [] if rate is None else [rate.interval_us, rate.burst]
        if read is not None:
            keys.append(read)
        if claim is not None:
            keys.append(claim.key)
            args += [claim.value, claim.ttl_ms]
        try:
            script = _READ_OR_CLAIM if rate is None else _GCRA
            reply = await get_multiplexed().run_script(script, keys, args)
        except redis.RedisError:
            if rate is None:
                logger.warning("Redis unavailable, %s not read", read, exc_info=True)
                return None, None
            return self._in_memory("allowance").consume_sync(key, rate), None
        decision = None if rate is None else _decision(reply)
        if decision is not None and not decision.allowed:
            return decision, None
        value, tried, held = reply[-3:]
        if claim is not None and tried:
            claim.held = held.decode() if isinstance(held, bytes) else held
        return decision, value

    async def _read(self, key: str) -> Value | None:
        try:
            return await get_multiplexed().execute("GET", key)
        except redis.RedisError:
            logger.warning("Redis unavailable, %s not read", key, exc_info=True)
            return None

    def consume_sync(self, key: str, rate: Rate) -> Decision:
        script = self._sync_script(get_sync_redis(), _GCRA_LUA)
        try:
            return _decision(script(keys=[key], args=[rate.interval_us, rate.burst]))
        except redis.RedisError:
            return self._in_memory("allowance").consume_sync(key, rate)

    async def slot_take(self, key: str, member: str, limit: int, ttl: float) -> bool:
        try:
            taken = await get_multiplexed().run_script(_SLOT, [key], [member, limit, _ms(ttl)])
        except redis.RedisError:
            return self._in_memory("slots").slot_take_sync(key, member, limit, ttl)
        return bool(taken)

    async def slots_renew(self, slots: list[tuple[str, str]], ttl: float) -> None:
        # (A slot taken in memory while Redis was down is counted in Redis from now on.)
        # Issued together, the renewals go out in one write.
        client = get_multiplexed()
        renewals = [
            client.run_script(_SLOT, [key], [member, _NO_CAP, _ms(ttl)]) for key, member in slots
        ]
        for renewal in asyncio.as_completed(renewals):
            try:
                await renewal
            except redis.RedisError:
                logger.warning("slots: Redis unavailable, not renewed", exc_info=True)

    async def slot_give_back(self, key: str, member: str) -> None:
        memory_store().slot_give_back_sync(key, member)  # taken there if Redis was down
        try:
            await get_multiplexed().execute("ZREM", key, member)
        except redis.RedisError:
            logger.warning("slots: Redis unavailable, slot left to lapse", exc_info=True)

    async def get(self, key: str) -> Value | None:
        with _unavailable():
            return await get_multiplexed().execute("GET", key)

    async def put(self, key: str, value: str, ttl: float) -> None:
        with _unavailable():
            await get_multiplexed().execute("SET", key, value, "PX", _ms(ttl))

    async def add(self, key: str, value: str, ttl: float) -> bool:
        with _unavailable():
            return bool(await get_multiplexed().execute("SET", key, value, "NX", "PX", _ms(ttl)))

    async def delete(self, key: str) -> None:
        with _unavailable():
            await get_multiplexed().execute("DEL", key)


@contextlib.contextmanager
def _unavailable():
    try:
        yield
    except redis.RedisError as error:
        raise StoreUnavailable(str(error)) from error


# --- The store of this configuration -----------------------------------------------------

_stores: RedisOrMemory[RedisStore, MemoryStore] = RedisOrMemory(RedisStore, MemoryStore())


def memory_store() -> MemoryStore:
    """This process's own state: the store without Redis, the fallback while it is down."""
    return _stores.memory


def reset_memory_store(clock: Callable[[], float] = time.monotonic) -> MemoryStore:
    """Start this process's state afresh (tests), optionally with a fake clock."""
    return _stores.reset(MemoryStore(clock))


def get_store() -> Store:
    """Redis when ``REDIS_URL`` is set, else this process's memory."""
    return _stores.get()
