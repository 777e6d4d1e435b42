"""Writes on tenants, keys and credits."""

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import keys
from billing.ledger import Change, change_apply
from billing.models import ApiKey, LedgerEntry, Plan, Tenant
from chatproject.errors import ApiError, ErrorCode

# last_used_at is written at most this often per key, so auth stays one read per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def tenant_create(*, name: str, plan_name: str = "free", credits: Decimal = Decimal(0)) -> Tenant:
    with transaction.atomic():
        tenant = Tenant.objects.create(name=name, plan=Plan.objects.get(name=plan_name))
        if credits:
            credits_top_up(tenant=tenant, amount=credits, note="initial credits")
            tenant.refresh_from_db(fields=["credit_balance"])
    return tenant


def api_key_create(
    *, tenant: Tenant, name: str = "", expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; the plaintext is returned here once and never stored."""
    raw_key = keys.generate_key(settings.API_KEY_ENV)
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=keys.display_prefix(raw_key),
        hashed_key=keys.hash_key(raw_key),
        expires_at=expires_at,
    )
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> None:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])


def api_key_authenticate(raw_key: str | None) -> ApiKey:
    """Resolve a presented key to a usable ApiKey (with tenant and plan loaded)."""
    if not raw_key:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Missing API key.")
    api_key = (
        ApiKey.objects.select_related("tenant__plan")
        .filter(hashed_key=keys.hash_key(raw_key))
        .first()
    )
    now = timezone.now()
    # One message for every failure, so the answer does not tell which keys exist.
    if api_key is None or not api_key.is_usable(now) or not api_key.tenant.is_active:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid, revoked or expired API key.")
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


def api_key_recheck(api_key_id: int) -> ApiKey:
    """A key seen before, checked again (revoked, expired, tenant deactivated since)."""
    api_key = ApiKey.objects.select_related("tenant__plan").filter(pk=api_key_id).first()
    if api_key is None or not api_key.is_usable() or not api_key.tenant.is_active:
        raise ApiError(ErrorCode.UNAUTHORIZED, "Invalid, revoked or expired API key.")
    return api_key


def credits_top_up(*, tenant: Tenant, amount: Decimal, note: str = "") -> LedgerEntry:
    if amount <= 0:
        raise ValueError("A top-up must be positive.")
    with transaction.atomic():
        return change_apply(Change(tenant.pk, LedgerEntry.Kind.TOP_UP, amount, note=note))
