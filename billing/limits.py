"""Every plan limit, enforced here and only here: each event a limit can apply to has one
function, which checks all the plan's limits for that event and raises the product's
error when one is reached. Transports and the engine call these at their events and
decide nothing themselves.

- a request (every API endpoint): :func:`request_admit`, :func:`request_admit_sync`:
  ``requests_per_minute`` with ``burst``, by GCRA (:mod:`billing.gcra`): a fresh tenant
  may send ``burst`` requests at once, after that one more every
  ``60 / requests_per_minute`` seconds (429 RATE_LIMITED, ``Retry-After``,
  ``X-RateLimit-*``);
- a generation (every transport, through the engine): :func:`generation_admit`:
  ``max_concurrent_generations`` (429 CONCURRENCY_LIMIT);
- a WebSocket connection: :func:`connection_admit`: ``ws_max_connections``
  (CONNECTION_LIMIT);
- a WebSocket message: :func:`message_admit`: ``ws_messages_per_second`` per
  connection, with bursts of as many (RATE_LIMITED).

Each check reads the plan the caller holds, so a plan change applies from the caller's
next read of the tenant.

Slots (generations, connections) are leases in the billing store (:mod:`billing.store`):
in Redis, shared by every process, or in this process's memory (also while Redis is
down). A killed process's slots lapse by themselves: the process serving a generation
renews its slot with its credit holds' leases (:mod:`chats.checkpoints`), live
connections refresh theirs (:mod:`chats.ws_slots`), and every ending gives its slot back.
Message allowances belong to one connection, so they stay in this process's memory.
"""

import math
from dataclasses import dataclass

from django.conf import settings

from billing.gcra import MICROS, Decision, Rate
from billing.models import Plan, Tenant
from billing.store import ClaimOnMiss, Value, get_store, memory_store
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode

KEY_PREFIX = "billing"


def rate_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:rl:{tenant_id}"


def connection_slots_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:ws:{tenant_id}"


def generation_slots_key(tenant_id: int) -> str:
    return f"{KEY_PREFIX}:gen:{tenant_id}"


def _message_key(connection_id: str) -> str:
    return f"{KEY_PREFIX}:msg:{connection_id}"


async def _plan_of(tenant: Tenant) -> Plan:
    if Tenant.plan.is_cached(tenant):
        return tenant.plan
    return await db_call(lambda: Plan.objects.get(pk=tenant.plan_id))


# --- Requests -------------------------------------------------------------------------


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


async def request_admit(
    tenant: Tenant, *, read: str | None = None, claim: ClaimOnMiss | None = None
) -> tuple[RateLimitState | None, Value | None]:
    """Admit one request of the tenant, or raise RATE_LIMITED (429 with ``Retry-After``
    and ``X-RateLimit-*`` headers). Returns where the tenant stands (None when its plan
    is unlimited) and, with ``read``, the value the store holds there (a cached answer),
    read in the same round trip (None when absent or unreadable), as is ``claim`` when
    that read finds nothing (:class:`~billing.store.ClaimOnMiss`)."""
    rate = Rate.of(await _plan_of(tenant))
    decision, value = await get_store().consume(rate_key(tenant.pk), rate, read=read, claim=claim)
    if rate is None or decision is None:  # unlimited: nothing was counted
        return None, value
    return _state_or_raise(decision, rate), value


def request_admit_sync(tenant: Tenant) -> RateLimitState | None:
    """:func:`request_admit` for sync code (DRF views); ``tenant.plan`` may be read."""
    rate = Rate.of(tenant.plan)
    if rate is None:
        return None
    return _state_or_raise(get_store().consume_sync(rate_key(tenant.pk), rate), rate)


# --- Generations ----------------------------------------------------------------------


async def generation_admit(tenant: Tenant, slot_id: str) -> None:
    """Take one of the tenant's slots for a generation, or raise CONCURRENCY_LIMIT (429,
    ``Retry-After``). The slot lapses after ``HOLD_LEASE_SECONDS`` unless renewed."""
    limit = (await _plan_of(tenant)).max_concurrent_generations
    key, ttl = generation_slots_key(tenant.pk), float(settings.HOLD_LEASE_SECONDS)
    if not await get_store().slot_take(key, slot_id, limit, ttl):
        retry_after = max(1, math.ceil(settings.STREAM_CHECKPOINT_SECONDS))
        raise ApiError(
            ErrorCode.CONCURRENCY_LIMIT,
            f"The tenant already runs {limit} generations at once; retry when one ends.",
            details={"limit": limit, "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


async def generation_release(tenant_id: int, slot_id: str) -> None:
    """Give a generation's slot back (it ended). Releasing one not held is harmless."""
    await get_store().slot_give_back(generation_slots_key(tenant_id), slot_id)


async def generation_slots_renew(slots: list[tuple[int, str]]) -> None:
    """Extend the leases of ``(tenant_id, slot_id)`` slots, in one round trip."""
    if slots:
        leases = [(generation_slots_key(tenant_id), slot_id) for tenant_id, slot_id in slots]
        await get_store().slots_renew(leases, float(settings.HOLD_LEASE_SECONDS))


# --- WebSocket connections and their messages -----------------------------------------


async def _connection_slot(tenant: Tenant, connection_id: str) -> tuple[bool, int]:
    limit = (await _plan_of(tenant)).ws_max_connections
    ttl = float(settings.WS_CONNECTION_SLOT_TTL_SECONDS)
    taken = await get_store().slot_take(connection_slots_key(tenant.pk), connection_id, limit, ttl)
    return taken, limit


async def connection_admit(tenant: Tenant, connection_id: str) -> None:
    """Take one of the tenant's connection slots, or raise CONNECTION_LIMIT.

    The slot lapses after ``WS_CONNECTION_SLOT_TTL_SECONDS`` unless refreshed, so a live
    connection calls :func:`connection_refresh` well within that time.
    """
    taken, limit = await _connection_slot(tenant, connection_id)
    if not taken:
        raise ApiError(
            ErrorCode.CONNECTION_LIMIT,
            "Too many concurrent connections for this tenant.",
            details={"limit": limit},
        )


async def connection_refresh(tenant: Tenant, connection_id: str) -> bool:
    """Extend a held slot. If it lapsed meanwhile it is taken again when one is free;
    False means the tenant is at its cap and this connection should close."""
    return (await _connection_slot(tenant, connection_id))[0]


async def connection_release(tenant: Tenant, connection_id: str) -> None:
    """Give the connection's slot back (on disconnect). Releasing one not held is
    harmless."""
    await get_store().slot_give_back(connection_slots_key(tenant.pk), connection_id)
    memory_store().forget(_message_key(connection_id))


def message_admit(tenant: Tenant, connection_id: str) -> None:
    """Admit one message on a WebSocket connection, or raise RATE_LIMITED; at the rate
    of the plan ``tenant`` holds now."""
    per_second = tenant.plan.ws_messages_per_second
    decision = memory_store().consume_sync(_message_key(connection_id), Rate.per_second(per_second))
    if not decision.allowed:
        raise ApiError(ErrorCode.RATE_LIMITED, f"More than {per_second} messages per second.")
