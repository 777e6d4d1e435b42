"""Per-tenant request rate limits and WebSocket connection slots.

Request limits are the plan's requests per minute with a burst, enforced with GCRA
(:mod:`billing.gcra`): a fresh tenant may send ``burst`` requests at once; after that one
more every ``60 / requests_per_minute`` seconds.

Connection slots cap a tenant's concurrent WebSocket connections (``ws_max_connections``).
They are leases (:meth:`billing.store.Store.slot_take`), so the slots of a crashed
process lapse by themselves; live connections refresh theirs.

Both are decided in the billing store (:mod:`billing.store`): in Redis, shared by every
process, or in this process's memory (also while Redis is down).
"""

import math
from dataclasses import dataclass

from django.conf import settings

from billing.gcra import MICROS, Decision, Rate
from billing.models import Plan, Tenant
from billing.store import Value, get_store
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode

KEY_PREFIX = "billing"


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


def rate_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:rl:{tenant_id}"


def slots_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:ws:{tenant_id}"


# --- Request rate limits --------------------------------------------------------------


async def _plan_of(tenant: Tenant) -> Plan:
    if Tenant.plan.is_cached(tenant):
        return tenant.plan
    return await db_call(lambda: Plan.objects.get(pk=tenant.plan_id))


def _state_or_raise(decision: Decision, rate: Rate) -> RateLimitState:
    reset = math.ceil(decision.reset_after_us / MICROS)
    if decision.allowed:
        return RateLimitState(limit=rate.burst, remaining=decision.remaining, reset_seconds=reset)
    retry_after = max(1, math.ceil(decision.retry_after_us / MICROS))
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
    return (await rate_limit_consume_and_read(tenant, None))[0]


async def rate_limit_consume_and_read(
    tenant: Tenant, key: str | None
) -> tuple[RateLimitState | None, Value | None]:
    """:func:`rate_limit_consume`, and for an admitted request the value stored at
    ``key`` read in the same call (None when absent or unreadable)."""
    rate = Rate.of(await _plan_of(tenant))
    decision, value = await get_store().consume(rate_key(tenant.pk), rate, read=key)
    return (None if rate is None else _state_or_raise(decision, rate)), value


def rate_limit_consume_sync(tenant: Tenant) -> RateLimitState | None:
    """:func:`rate_limit_consume` for sync code (DRF views); ``tenant.plan`` may be read."""
    rate = Rate.of(tenant.plan)
    if rate is None:
        return None
    return _state_or_raise(get_store().consume_sync(rate_key(tenant.pk), rate), rate)


# --- WebSocket connection slots -------------------------------------------------------


async def connection_slot_acquire(tenant: Tenant, connection_id: str) -> bool:
    """Take one of the tenant's ``ws_max_connections`` slots; False when all are taken.

    The slot lapses after ``WS_CONNECTION_SLOT_TTL_SECONDS`` unless refreshed, so a live
    connection calls :func:`connection_slot_refresh` well within that time.
    """
    plan = await _plan_of(tenant)
    return await get_store().slot_take(
        slots_key(tenant.pk),
        connection_id,
        plan.ws_max_connections,
        float(settings.WS_CONNECTION_SLOT_TTL_SECONDS),
    )


async def connection_slot_refresh(tenant: Tenant, connection_id: str) -> bool:
    """Extend a held slot. If it lapsed meanwhile it is taken again when one is free;
    False means the tenant is at its cap and this connection should close (4029)."""
    return await connection_slot_acquire(tenant, connection_id)


async def connection_slot_release(tenant: Tenant, connection_id: str) -> None:
    """Give the slot back (on disconnect). Releasing a slot not held is harmless."""
    await get_store().slot_give_back(slots_key(tenant.pk), connection_id)
