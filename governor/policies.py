"""Each tenant's governor policy, cached in-process for a few seconds.

The gate runs on every request, so the policy is read from the database at most
once per ``POLICY_CACHE_SECONDS`` per tenant and process. Saving a policy drops
this process's entry at once; other processes pick the new version up when
their entry expires.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from billing.models import Tenant
from governor.evaluation import Policy
from governor.models import GovernorPolicy

POLICY_CACHE_SECONDS = 5.0

# (tenant id, tenant created_at) -> (expires at, policy). The creation time is part of
# the key so that a new tenant reusing a deleted tenant's id (SQLite reuses ids, and
# tests roll back) never inherits that tenant's cached policy.
_CacheKey = tuple[int, datetime | None]
_cache: dict[_CacheKey, tuple[float, Policy]] = {}
_lock = threading.Lock()


def policy_get_or_create(*, tenant: Tenant) -> GovernorPolicy:
    """The tenant's stored policy, created with the defaults on first use."""
    policy, _ = GovernorPolicy.objects.get_or_create(tenant=tenant)
    return policy


def policy_for_tenant(*, tenant: Tenant) -> Policy:
    """The tenant's policy as the pure ``Policy`` (its ``version`` included), cached."""
    key = (tenant.pk, tenant.created_at)
    now = time.monotonic()
    entry = _cache.get(key)
    if entry is not None and entry[0] > now:
        return entry[1]
    policy = policy_get_or_create(tenant=tenant).to_policy()
    with _lock:
        _cache[key] = (now + POLICY_CACHE_SECONDS, policy)
    return policy


def policy_for_tenant_if_cached(*, tenant: Tenant) -> Policy | None:
    """The tenant's policy when this process has it cached (no database access), else
    None."""
    entry = _cache.get((tenant.pk, tenant.created_at))
    if entry is not None and entry[0] > time.monotonic():
        return entry[1]
    return None


def policy_cache_invalidate(tenant_id: int | None = None) -> None:
    """Forget the cached policy of one tenant (all tenants when None) in this process."""
    with _lock:
        if tenant_id is None:
            _cache.clear()
            return
        for key in [k for k in _cache if k[0] == tenant_id]:
            _cache.pop(key, None)
