"""API keys resolved from an in-process cache.

Every API request presents a key. Reading it with its tenant and plan costs a query and,
from async code, a thread hand-off; here a key read is reused for
``API_KEY_CACHE_SECONDS`` (1 s) in each process. A short life rather than a message to
each process when a key changes: a key revoked, a tenant deactivated or a plan changed in
any way (the admin, the ORM, an ``update()``, SQL) is seen by every process within that
second, with no message to miss and nothing listening. Expiry is checked on every use,
against the clock. Saves and deletes through the ORM in this process are seen at once.

The cost: a busy key is read once a second per process; a key used less often than that
is read on each use, as without the cache. Keys that fail are never cached.
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

MAX_ENTRIES = 10_000  # past this the cache starts over: keys are few, floods are not cached

# hashed key -> (read at, the key with its tenant and plan)
_cache: dict[str, tuple[float, ApiKey]] = {}
_lock = threading.Lock()


def _cached(hashed: str) -> ApiKey | None:
    entry = _cache.get(hashed)
    if entry is None or time.monotonic() - entry[0] >= settings.API_KEY_CACHE_SECONDS:
        return None
    api_key = entry[1]
    if not api_key.is_usable(timezone.now()):  # expired since it was read
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid, revoked or expired API key.")
    return api_key


def _store(hashed: str, read_at: float, api_key: ApiKey) -> None:
    if settings.API_KEY_CACHE_SECONDS <= 0:
        return
    with _lock:
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[hashed] = (read_at, api_key)


def api_key_resolve(raw_key: str | None) -> ApiKey:
    """:func:`api_key_authenticate`, from the cache when this process read the key less
    than ``API_KEY_CACHE_SECONDS`` ago. Sync: may read the database."""
    hashed = keys.hash_key(raw_key) if raw_key else ""
    api_key = _cached(hashed) if hashed else None
    if api_key is None:
        read_at = time.monotonic()
        api_key = api_key_authenticate(raw_key)
        _store(hashed, read_at, api_key)
    return api_key


async def api_key_resolve_async(raw_key: str | None) -> ApiKey:
    """:func:`api_key_resolve` for async code: no thread hand-off on a cache hit."""
    hashed = keys.hash_key(raw_key) if raw_key else ""
    api_key = _cached(hashed) if hashed else None
    if api_key is None:
        read_at = time.monotonic()
        api_key = await db_call(api_key_authenticate, raw_key)
        _store(hashed, read_at, api_key)
    return api_key


def key_cache_clear(**_) -> None:
    """Forget every cached key of this process."""
    with _lock:
        _cache.clear()


def _forget_key(instance: ApiKey, **_) -> None:
    with _lock:
        _cache.pop(instance.hashed_key, None)


def connect_signals() -> None:
    """Drop this process's copies when a key, tenant or plan is saved or deleted here.
    (A change made elsewhere is seen when the copy's second is up.)"""
    for name, signal in (("save", post_save), ("delete", post_delete)):
        signal.connect(_forget_key, sender=ApiKey, dispatch_uid=f"key-cache-{name}-key")
        # Rare changes: forgetting every key is simpler than finding the tenant's.
        for model in (Tenant, Plan):
            uid = f"key-cache-{name}-{model.__name__}"
            signal.connect(key_cache_clear, sender=model, dispatch_uid=uid)
