"""What an answer tells in its headers about its generation: the governor's and the
rate limiter's headers, a replay, where to resume the stream, the credits left."""

from __future__ import annotations

from decimal import Decimal

from billing.models import Tenant
from chatproject.db import db_call
from chats.engine import Generation


def generation_headers(generation: Generation) -> dict[str, str]:
    """The governor's and the rate limiter's headers."""
    headers = dict(generation.decision.headers())
    if generation.rate_limit is not None:
        headers.update(generation.rate_limit.headers())
    if generation.replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


def stream_headers(generation: Generation, path: str) -> dict[str, str]:
    """Where a client that lost the stream resumes it (``GET`` with ``Last-Event-ID``)."""
    stream_id = generation.message_id.hex
    return {"x-stream-id": stream_id, "x-stream-url": path.format(stream_id=stream_id)}


async def credits_remaining(generation: Generation, tenant: Tenant) -> Decimal:
    """The balance as known before the stream: after the hold, or (no hold: a cache hit)
    read now (the tenant came with its key, perhaps from the key cache a second ago)."""
    remaining = generation.credits_remaining
    if remaining is not None:
        return remaining
    balance = Tenant.objects.values_list("credit_balance", flat=True)
    return await db_call(balance.get, pk=tenant.pk)
