"""The cap on a tenant's concurrent generations (``Plan.max_concurrent_generations``),
across every transport and every server process.

Each running generation holds a slot. Slots are leases in the billing store
(:mod:`billing.store`), like WebSocket connection slots: in Redis when configured, in
process memory without Redis or while Redis is down. The process serving a generation
renews its slots with its credit holds' leases (:mod:`chats.checkpoints`) and gives a
slot back in every ending; a killed process's slots lapse after ``HOLD_LEASE_SECONDS``.
"""

import math

from django.conf import settings

from billing.models import Tenant
from billing.ratelimit import _plan_of
from billing.store import get_store
from chatproject.errors import ApiError, ErrorCode


def slots_key(tenant_id: int) -> str:
    return f"billing:gen:{tenant_id}"


async def generation_slot_acquire(tenant: Tenant, slot_id: str) -> None:
    """Take one of the tenant's slots for a generation, or raise CONCURRENCY_LIMIT (429,
    ``Retry-After``)."""
    limit = (await _plan_of(tenant)).max_concurrent_generations
    key, ttl = slots_key(tenant.pk), float(settings.HOLD_LEASE_SECONDS)
    if not await get_store().slot_take(key, slot_id, limit, ttl):
        retry_after = max(1, math.ceil(settings.STREAM_CHECKPOINT_SECONDS))
        raise ApiError(
            ErrorCode.CONCURRENCY_LIMIT,
            f"The tenant already runs {limit} generations at once; retry when one ends.",
            details={"limit": limit, "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


async def generation_slot_release(tenant_id: int, slot_id: str) -> None:
    """Give a slot back (the generation ended). Releasing one not held is harmless."""
    await get_store().slot_give_back(slots_key(tenant_id), slot_id)


async def generation_slots_renew(slots: list[tuple[int, str]]) -> None:
    """Extend the leases of ``(tenant_id, slot_id)`` slots, in one round trip."""
    if slots:
        leases = [(slots_key(tenant_id), slot_id) for tenant_id, slot_id in slots]
        await get_store().slots_renew(leases, float(settings.HOLD_LEASE_SECONDS))
