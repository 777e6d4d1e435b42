"""API keys resolved from an in-process cache.

Every API request presents a key. Reading it with its tenant and plan costs a query and,
from async code, a thread hand-off; here a key read is reused for
``API_KEY_CACHE_SECONDS`` (1 s) in each process. A short life rather than a message to
each process when a key changes: a key revoked, a tenant deactivated or a plan changed in
any way (the admin, the ORM, an ``update()``, SQL) is seen by every process within that
second, with no message to miss and nothing listening. Expiry is checked on every use,
against the clock. Saves and deletes through the ORM in this process are seen at once.

The cost: a busy key is read about twice a second per process, in the background (past
half its second a use starts the next read and is answered from the copy), so no request
of a busy key waits on the database; a key used less often than that is read on each use,
as without the cache, and the uses that arrive while it is read wait for that one read.
Keys that fail are never cached.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from billing import keys
from billing.models import ApiKey, Plan, Tenant
from billing.services import api_key_authenticate
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode
from chatproject.shared_reads import SharedReads

MAX_ENTRIES = 10_000  # past this the cache starts over: keys are few, floods are not cached

# hashed key -> (read at, the key with its tenant and plan)
_cache: dict[str, tuple[float, ApiKey]] = {}
_lock = threading.Lock()
# Bumped whenever copies are forgotten: a read begun before then must not store its answer.
_generation = 0
_reads: SharedReads[ApiKey] = SharedReads()  # by hashed key


def _cached(hashed: str) -> ApiKey | None:
    entry = _cache.get(hashed)
    if entry is None or time.monotonic() - entry[0] >= settings.API_KEY_CACHE_SECONDS:
        return None
    return _usable(entry[1])


def _store(hashed: str, read_at: float, api_key: ApiKey, generation: int) -> None:
    if settings.API_KEY_CACHE_SECONDS <= 0:
        return
    with _lock:
        if generation != _generation:  # a key, tenant or plan was saved during the read
            return
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[hashed] = (read_at, api_key)


def api_key_resolve(raw_key: str | None) -> ApiKey:
    """:func:`api_key_authenticate`, from the cache when this process read the key less
    than ``API_KEY_CACHE_SECONDS`` ago. Sync: may read the database."""
    hashed = keys.hash_key(raw_key) if raw_key else ""
    api_key = _cached(hashed) if hashed else None
    if api_key is None:
        read_at, generation = time.monotonic(), _generation
        api_key = api_key_authenticate(raw_key)
        _store(hashed, read_at, api_key, generation)
    return api_key


async def api_key_resolve_async(raw_key: str | None) -> ApiKey:
    """:func:`api_key_resolve` for async code: no thread hand-off on a cache hit, the next
    read started ahead of the copy's end, and one read for the uses that wait on it."""
    if not raw_key:
        return api_key_authenticate(raw_key)  # refused without reading anything
    hashed = keys.hash_key(raw_key)
    life = settings.API_KEY_CACHE_SECONDS
    api_key = await _reads.latest(
        hashed, _cache.get(hashed), life, lambda: _read_and_store(hashed, raw_key)
    )
    return _usable(api_key)


def _usable(api_key: ApiKey) -> ApiKey:
    if not api_key.is_usable(timezone.now()):  # expired since it was read
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid, revoked or expired API key.")
    return api_key


async def _read_and_store(hashed: str, raw_key: str) -> ApiKey:
    read_at, generation = time.monotonic(), _generation
    try:
        api_key = await db_call(api_key_authenticate, raw_key)
    except ApiError:  # revoked, expired, deactivated since: the copy goes too
        with _lock:
            _cache.pop(hashed, None)
        raise
    _store(hashed, read_at, api_key, generation)
    return api_key


def key_cache_clear(**_) -> None:
    """Forget every cached key of this process."""
    global _generation
    with _lock:
        _cache.clear()
        _generation += 1


def _forget_key(instance: ApiKey, **_) -> None:
    global _generation
    with _lock:
        _cache.pop(instance.hashed_key, None)
        _generation += 1


def connect_signals() -> None:
    """Drop this process's copies when a key, tenant or plan is saved or deleted here.
    (A change made elsewhere is seen when the copy's second is up.)"""
    for name, signal in (("save", post_save), ("delete", post_delete)):
        signal.connect(_forget_key, sender=ApiKey, dispatch_uid=f"key-cache-{name}-key")
        # Rare changes: forgetting every key is simpler than finding the tenant's.
        for model in (Tenant, Plan):
            uid = f"key-cache-{name}-{model.__name__}"
            signal.connect(key_cache_clear, sender=model, dispatch_uid=uid)
