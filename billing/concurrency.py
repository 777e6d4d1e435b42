"""The cap on a tenant's concurrent generations (``Plan.max_concurrent_generations``),
across every transport and every server process.

Each running generation holds a slot. Slots are leases, like WebSocket connection slots
(:mod:`billing.ratelimit`): in Redis a sorted set of slot ids per tenant scored by expiry
(the same script), in process memory without Redis or while Redis is down. The process
serving a generation renews its slots with its credit holds' leases
(:mod:`chats.checkpoints`) and gives a slot back in every ending; a killed process's
slots lapse after ``HOLD_LEASE_SECONDS``.
"""

import logging
import math

import redis
from django.conf import settings

from billing.models import Tenant
from billing.ratelimit import MemoryBackend, _plan_of, _scripts_for_async, redis_gate
from chatproject.errors import ApiError, ErrorCode
from chatproject.redis import get_redis

logger = logging.getLogger(__name__)

_memory = MemoryBackend()
_NO_CAP = 2**31  # a renewal never refuses a slot it holds, even one that lapsed


def slots_key(tenant_id: int) -> str:
    return f"billing:gen:{tenant_id}"


def _ttl_ms() -> int:
    return max(1, round(settings.HOLD_LEASE_SECONDS * 1000))


async def generation_slot_acquire(tenant: Tenant, slot_id: str) -> None:
    """Take one of the tenant's slots for a generation, or raise CONCURRENCY_LIMIT (429,
    ``Retry-After``)."""
    limit = (await _plan_of(tenant)).max_concurrent_generations
    if not await _acquire(tenant.pk, slot_id, limit):
        retry_after = max(1, math.ceil(settings.STREAM_CHECKPOINT_SECONDS))
        raise ApiError(
            ErrorCode.CONCURRENCY_LIMIT,
            f"The tenant already runs {limit} generations at once; retry when one ends.",
            details={"limit": limit, "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


async def _acquire(tenant_id: int, slot_id: str, limit: int) -> bool:
    if settings.REDIS_URL:
        _, slot_script = _scripts_for_async(get_redis())
        try:
            async with redis_gate():
                return bool(
                    await slot_script(keys=[slots_key(tenant_id)], args=[slot_id, limit, _ttl_ms()])
                )
        except redis.RedisError:
            logger.warning("generation slots: Redis unavailable, counted in this process")
    return _memory.slot_acquire(tenant_id, slot_id, limit, settings.HOLD_LEASE_SECONDS)


async def generation_slot_release(tenant_id: int, slot_id: str) -> None:
    """Give a slot back (the generation ended). Releasing one not held is harmless."""
    _memory.slot_release(tenant_id, slot_id)
    if not settings.REDIS_URL:
        return
    try:
        async with redis_gate():
            await get_redis().zrem(slots_key(tenant_id), slot_id)
    except redis.RedisError:
        logger.warning("generation slots: Redis unavailable, slot left to lapse")


async def generation_slots_renew(slots: list[tuple[int, str]]) -> None:
    """Extend the leases of ``(tenant_id, slot_id)`` slots, in one round trip."""
    if not slots:
        return
    if not settings.REDIS_URL:
        for tenant_id, slot_id in slots:
            _memory.slot_acquire(tenant_id, slot_id, _NO_CAP, settings.HOLD_LEASE_SECONDS)
        return
    # (A slot taken in memory while Redis was down is counted in Redis from now on.)
    client = get_redis()
    _, slot_script = _scripts_for_async(client)
    try:
        async with redis_gate(), client.pipeline(transaction=False) as pipe:
            for tenant_id, slot_id in slots:
                await slot_script(
                    keys=[slots_key(tenant_id)], args=[slot_id, _NO_CAP, _ttl_ms()], client=pipe
                )
            await pipe.execute()
    except redis.RedisError:
        logger.warning("generation slots: Redis unavailable, not renewed", exc_info=True)


def reset_memory_slots() -> None:
    """Forget the in-process slots (tests)."""
    global _memory
    _memory = MemoryBackend()
