"""Per-tenant request rate limits and WebSocket connection slots.

Request limits are the plan's requests per minute with a burst, enforced with GCRA (the
generic cell rate algorithm: a token bucket kept as one timestamp, the "theoretical
arrival time"). A fresh tenant may send ``burst`` requests at once; after that one more
every ``60 / requests_per_minute`` seconds. With ``REDIS_URL`` set the decision is one
Lua script in Redis, atomic across every server process and timed by Redis's own clock;
otherwise it is taken in process memory under a lock.

Connection slots cap a tenant's concurrent WebSocket connections (``ws_max_connections``).
In Redis each tenant has a sorted set of connection ids scored by their expiry, so the
slots of a crashed process lapse by themselves; live connections refresh theirs.

While Redis is down the limits are not dropped: each process enforces them in its own
memory instead (the in-process backend below), so N processes admit up to N times a
plan's allowance until Redis is back, and failures are logged. A Redis outage should
not take the whole API down with it, nor open it to floods. So that a burst of requests
in one process is not mistaken for an outage, billing's Redis calls queue for the shared
client's connections (:func:`redis_gate`) instead of overflowing its pool.
"""

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from django.conf import settings

from billing.models import Plan, Tenant
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode
from chatproject.redis import get_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "billing"
_MICROS = 1_000_000


@dataclass(frozen=True)
class RateLimitState:
    """Where a tenant stands after a request: the bucket's size, what is left of it, and
    the seconds until it is full again."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


@dataclass(frozen=True)
class Decision:
    """One GCRA decision, in microseconds."""

    allowed: bool
    remaining: int
    retry_after_us: int  # 0 when allowed
    reset_after_us: int  # until the bucket is full again


@dataclass(frozen=True)
class Rate:
    interval_us: int  # one request's worth of time
    burst: int

    @classmethod
    def of(cls, plan: Plan) -> "Rate | None":
        if plan.requests_per_minute is None:
            return None
        per_minute = max(1, plan.requests_per_minute)
        burst = plan.burst if plan.burst else per_minute
        return cls(interval_us=max(1, round(60 * _MICROS / per_minute)), burst=max(1, burst))


def gcra(*, tat_us: int | None, now_us: int, rate: Rate) -> tuple[Decision, int | None]:
    """The pure GCRA step: the decision and the new arrival time to store (None: unchanged).

    The Lua script below is this function, line for line.
    """
    tat = max(tat_us if tat_us is not None else now_us, now_us)
    new_tat = tat + rate.interval_us
    allow_at = new_tat - rate.interval_us * rate.burst
    if now_us < allow_at:
        return Decision(False, 0, allow_at - now_us, tat - now_us), None
    remaining = (now_us - allow_at) // rate.interval_us
    return Decision(True, remaining, 0, new_tat - now_us), new_tat


# KEYS[1]: the tenant's arrival-time key. ARGV: interval (µs), burst.
# KEYS[2], optional: a key to read for an admitted request (its response cache entry),
# returned fifth, so the request's two lookups cost one round trip.
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
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now, read}
"""

# KEYS[1]: the tenant's slot set. ARGV: connection id, max connections, ttl (ms).
# Acquiring a slot the connection holds already extends it (that is also the refresh).
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


def rate_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:rl:{tenant_id}"


def slots_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:ws:{tenant_id}"


# --- In-process backend ---------------------------------------------------------------


class MemoryBackend:
    """Limits for a single process: safe from threads and from coroutines (the lock is
    never held across an ``await``). ``clock`` returns seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tats: dict[int, int] = {}
        self._slots: dict[int, dict[str, float]] = {}

    def consume(self, tenant_id: int, rate: Rate) -> Decision:
        with self._lock:
            now_us = int(self.clock() * _MICROS)
            decision, new_tat = gcra(tat_us=self._tats.get(tenant_id), now_us=now_us, rate=rate)
            if new_tat is not None:
                self._tats[tenant_id] = new_tat
            if len(self._tats) > 10_000:  # forget full buckets: they equal no entry
                self._tats = {k: v for k, v in self._tats.items() if v > now_us}
            return decision

    def slot_acquire(self, tenant_id: int, connection_id: str, limit: int, ttl: float) -> bool:
        with self._lock:
            now = self.clock()
            slots = self._slots.setdefault(tenant_id, {})
            for member in [m for m, expiry in slots.items() if expiry <= now]:
                del slots[member]
            if connection_id not in slots and len(slots) >= limit:
                return False
            slots[connection_id] = now + ttl
            return True

    def slot_release(self, tenant_id: int, connection_id: str) -> None:
        with self._lock:
            self._slots.get(tenant_id, {}).pop(connection_id, None)


_memory = MemoryBackend()


def memory_backend() -> MemoryBackend:
    return _memory


def reset_memory_backend(clock: Callable[[], float] = time.monotonic) -> MemoryBackend:
    """Start the in-process limits afresh (tests), optionally with a fake clock."""
    global _memory
    _memory = MemoryBackend(clock)
    return _memory


# --- Redis backend --------------------------------------------------------------------

# redis-py 8's async pool holds 100 connections and raises MaxConnectionsError (rather
# than waiting) when a command finds them all busy. Billing keeps below that, leaving
# room for the client's other users, and makes its callers wait their turn.
REDIS_CONCURRENCY = 64
_gates: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
    weakref.WeakKeyDictionary()
)


def redis_gate() -> asyncio.Semaphore:
    """The running loop's limit on billing's concurrent Redis commands."""
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(REDIS_CONCURRENCY)
    return gate


_async_scripts: "weakref.WeakKeyDictionary[aioredis.Redis, tuple]" = weakref.WeakKeyDictionary()
_sync_scripts_for: tuple[str, tuple] | None = None
_sync_lock = threading.Lock()


def _scripts_for_async(client: aioredis.Redis) -> tuple:
    scripts = _async_scripts.get(client)
    if scripts is None:
        scripts = (client.register_script(_GCRA_LUA), client.register_script(_SLOT_LUA))
        _async_scripts[client] = scripts
    return scripts


def _sync_scripts() -> tuple:
    """The scripts on a blocking client, for sync callers (DRF views run in threads).

    One client per process; its connection pool makes it safe to share between threads.
    """
    global _sync_scripts_for
    with _sync_lock:
        if _sync_scripts_for is None or _sync_scripts_for[0] != settings.REDIS_URL:
            client = redis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=5
            )
            scripts = (client.register_script(_GCRA_LUA), client.register_script(_SLOT_LUA))
            _sync_scripts_for = (settings.REDIS_URL, scripts)
        return _sync_scripts_for[1]


def _decision(reply) -> Decision:
    allowed, remaining, retry_after, reset_after = (int(x) for x in reply[:4])
    return Decision(bool(allowed), remaining, retry_after, reset_after)


# --- Request rate limits --------------------------------------------------------------


async def _plan_of(tenant: Tenant) -> Plan:
    if Tenant.plan.is_cached(tenant):
        return tenant.plan
    return await db_call(lambda: Plan.objects.get(pk=tenant.plan_id))


def _state_or_raise(decision: Decision, rate: Rate) -> RateLimitState:
    reset = math.ceil(decision.reset_after_us / _MICROS)
    if decision.allowed:
        return RateLimitState(limit=rate.burst, remaining=decision.remaining, reset_seconds=reset)
    retry_after = max(1, math.ceil(decision.retry_after_us / _MICROS))
    state = RateLimitState(limit=rate.burst, remaining=0, reset_seconds=reset)
    raise ApiError(
        ErrorCode.RATE_LIMITED,
        f"Rate limit exceeded. Retry after {retry_after} s.",
        details={"retry_after": retry_after},
        headers={"Retry-After": str(retry_after), **state.headers()},
    )


async def rate_limit_consume(tenant: Tenant) -> RateLimitState | None:
    """Take one request from the tenant's allowance; None when the plan is unlimited.

    Raises ApiError(RATE_LIMITED) with ``Retry-After`` and ``X-RateLimit-*`` headers when
    the allowance is spent.
    """
    rate = Rate.of(await _plan_of(tenant))
    if rate is None:
        return None
    if settings.REDIS_URL:
        decision, _ = await _redis_consume(tenant.pk, rate)
    else:
        decision = _memory.consume(tenant.pk, rate)
    return _state_or_raise(decision, rate)


async def rate_limit_consume_and_read(
    tenant: Tenant, key: str
) -> tuple[RateLimitState | None, bytes | None]:
    """:func:`rate_limit_consume`, and the value at ``key`` read in the same Redis call
    (None when absent or when Redis fails). Only with ``REDIS_URL`` set."""
    rate = Rate.of(await _plan_of(tenant))
    if rate is None:
        try:
            async with redis_gate():
                return None, await get_redis().get(key)
        except redis.RedisError:
            logger.warning("Redis unavailable, %s not read", key, exc_info=True)
            return None, None
    decision, value = await _redis_consume(tenant.pk, rate, read_key=key)
    return _state_or_raise(decision, rate), value


async def _redis_consume(
    tenant_id: int, rate: Rate, read_key: str | None = None
) -> tuple[Decision, bytes | None]:
    """The GCRA script's decision and, for an admitted request, the value at
    ``read_key``; when Redis fails, this process's own decision and no value."""
    gcra_script, _ = _scripts_for_async(get_redis())
    keys = [rate_key(tenant_id)] if read_key is None else [rate_key(tenant_id), read_key]
    try:
        async with redis_gate():
            reply = await gcra_script(keys=keys, args=[rate.interval_us, rate.burst])
    except redis.RedisError:
        return _memory_instead(tenant_id, rate), None
    return _decision(reply), (reply[4] if len(reply) > 4 else None)


def _memory_instead(tenant_id: int, rate: Rate) -> Decision:
    logger.warning("rate limit: Redis unavailable, limited in this process", exc_info=True)
    return _memory.consume(tenant_id, rate)


def rate_limit_consume_sync(tenant: Tenant) -> RateLimitState | None:
    """:func:`rate_limit_consume` for sync code (DRF views); ``tenant.plan`` may be read."""
    rate = Rate.of(tenant.plan)
    if rate is None:
        return None
    if settings.REDIS_URL:
        gcra_script, _ = _sync_scripts()
        try:
            reply = gcra_script(keys=[rate_key(tenant.pk)], args=[rate.interval_us, rate.burst])
            decision = _decision(reply)
        except redis.RedisError:
            decision = _memory_instead(tenant.pk, rate)
    else:
        decision = _memory.consume(tenant.pk, rate)
    return _state_or_raise(decision, rate)


# --- WebSocket connection slots -------------------------------------------------------


def _slot_ttl() -> float:
    return float(settings.WS_CONNECTION_SLOT_TTL_SECONDS)


async def connection_slot_acquire(tenant: Tenant, connection_id: str) -> bool:
    """Take one of the tenant's ``ws_max_connections`` slots; False when all are taken.

    The slot lapses after ``WS_CONNECTION_SLOT_TTL_SECONDS`` unless refreshed, so a live
    connection calls :func:`connection_slot_refresh` well within that time.
    """
    plan = await _plan_of(tenant)
    ttl = _slot_ttl()
    if not settings.REDIS_URL:
        return _memory.slot_acquire(tenant.pk, connection_id, plan.ws_max_connections, ttl)
    _, slot_script = _scripts_for_async(get_redis())
    try:
        async with redis_gate():
            granted = await slot_script(
                keys=[slots_key(tenant.pk)],
                args=[connection_id, plan.ws_max_connections, max(1, round(ttl * 1000))],
            )
    except redis.RedisError:
        logger.warning(
            "connection slots: Redis unavailable, counted in this process", exc_info=True
        )
        return _memory.slot_acquire(tenant.pk, connection_id, plan.ws_max_connections, ttl)
    return bool(granted)


async def connection_slot_refresh(tenant: Tenant, connection_id: str) -> bool:
    """Extend a held slot. If it lapsed meanwhile it is taken again when one is free;
    False means the tenant is at its cap and this connection should close (4029)."""
    return await connection_slot_acquire(tenant, connection_id)


async def connection_slot_release(tenant: Tenant, connection_id: str) -> None:
    """Give the slot back (on disconnect). Releasing a slot not held is harmless."""
    _memory.slot_release(tenant.pk, connection_id)  # taken there if Redis was down
    if not settings.REDIS_URL:
        return
    try:
        async with redis_gate():
            await get_redis().zrem(slots_key(tenant.pk), connection_id)
    except redis.RedisError:
        logger.warning("connection slots: Redis unavailable, slot left to lapse", exc_info=True)
