"""Idempotency-Key: one request per key, its answer replayed to retries.

A request claims its key atomically (:meth:`billing.store.Store.add`) with a
fingerprint of what it asks. A retry then finds the claim: while the first is still
running it is refused (409, retry later); once the first completed, the stored answer is
replayed; with a different request under the same key it is refused (400). A request
that fails or is cancelled gives its claim up, so a retry runs afresh.

A replay is the original answer unchanged: with the answer, the first request's message id,
credit figures and cache status are kept (its :class:`Receipt`) and reported again.
"""

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from django.conf import settings

from billing.response_cache import CachedAnswer, decode_answer, encode_answer, idempotency_key
from billing.store import StoreUnavailable, get_store

logger = logging.getLogger(__name__)

# How long a claim lasts without an answer: past the longest a generation can take.
PENDING_SECONDS = 900


@dataclass(frozen=True)
class Receipt:
    """What the first request reported, beyond its answer."""

    message_id: uuid.UUID
    credits_charged: Decimal
    credits_remaining: Decimal
    cache_status: str

    def encode(self) -> dict[str, str]:
        return {
            "id": str(self.message_id),
            "c": str(self.credits_charged),
            "b": str(self.credits_remaining),
            "s": self.cache_status,
        }

    @classmethod
    def decode(cls, data: dict[str, str]) -> "Receipt":
        return cls(uuid.UUID(data["id"]), Decimal(data["c"]), Decimal(data["b"]), data["s"])


@dataclass(frozen=True)
class Claim:
    state: Literal["claimed", "replay", "in_progress", "mismatch"]
    answer: CachedAnswer | None = None
    receipt: Receipt | None = None


def request_fingerprint(**parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _value(fingerprint: str, answer: CachedAnswer | None, receipt: Receipt | None = None) -> str:
    return json.dumps(
        {
            "fp": fingerprint,
            "a": encode_answer(answer) if answer else None,
            "r": receipt.encode() if receipt else None,
        }
    )


async def idempotency_claim(tenant_id: int, key: str, fingerprint: str) -> Claim:
    """Claim ``key`` for this request, or say what an earlier one left there."""
    storage_key = idempotency_key(tenant_id, key)
    pending = _value(fingerprint, None)
    store = get_store()
    try:
        if await store.add(storage_key, pending, PENDING_SECONDS):
            return Claim("claimed")
        raw = await store.get(storage_key)
    except StoreUnavailable:  # without the store, behave as if no key had been sent
        logger.warning("idempotency store unavailable; request runs unclaimed", exc_info=True)
        return Claim("claimed")
    if raw is None:  # expired between the two calls: claim again
        return await idempotency_claim(tenant_id, key, fingerprint)
    stored = json.loads(raw)
    if stored["fp"] != fingerprint:
        return Claim("mismatch")
    if stored["a"] is None:
        return Claim("in_progress")
    answer = decode_answer(stored["a"])
    if answer is None:
        return Claim("in_progress")
    try:
        receipt = Receipt.decode(stored["r"]) if stored.get("r") else None
    except (ValueError, TypeError, KeyError, ArithmeticError):
        logger.warning("idempotency record: unreadable receipt ignored")
        receipt = None
    return Claim("replay", answer, receipt)


async def idempotency_complete(
    tenant_id: int, key: str, fingerprint: str, answer: CachedAnswer, receipt: Receipt
) -> None:
    """Keep the claimed request's complete answer, and what it reported, for retries."""
    value = _value(fingerprint, answer, receipt)
    await _write(tenant_id, key, value, settings.IDEMPOTENCY_TTL_SECONDS)


async def idempotency_abandon(tenant_id: int, key: str) -> None:
    """Give the claim up (the request failed or was cancelled): a retry runs afresh."""
    await _write(tenant_id, key, None, 0)


async def _write(tenant_id: int, key: str, value: str | None, ttl: float) -> None:
    storage_key = idempotency_key(tenant_id, key)
    store = get_store()
    try:
        if value is None or ttl <= 0:
            await store.delete(storage_key)
        else:
            await store.put(storage_key, value, ttl)
    except StoreUnavailable:
        logger.warning("idempotency store unavailable; claim not updated", exc_info=True)
