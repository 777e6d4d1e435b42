"""Tenants, their plans and API keys, and the credit balance with its ledger."""

from decimal import Decimal
from typing import TypedDict

from django.db import models
from django.db.models import Q
from django.utils import timezone


class _Digits(TypedDict):
    max_digits: int
    decimal_places: int


CREDIT_DIGITS: _Digits = {"max_digits": 20, "decimal_places": 6}


class Plan(models.Model):
    """What a tenant may do: request rate (per minute, with burst), WebSocket limits and
    concurrent generations.

    A null rate means unlimited.
    """

    name = models.SlugField(max_length=50, unique=True)
    display_name = models.CharField(max_length=100)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    burst = models.PositiveIntegerField(null=True, blank=True)
    ws_messages_per_second = models.PositiveIntegerField(default=10)
    ws_max_connections = models.PositiveIntegerField(default=50)
    # Generations running at once, over every transport and process (billing.limits).
    max_concurrent_generations = models.PositiveIntegerField(default=50)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.display_name


class Tenant(models.Model):
    name = models.CharField(max_length=100, unique=True)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    is_active = models.BooleanField(default=True)
    credit_balance = models.DecimalField(default=Decimal("0"), **CREDIT_DIGITS)
    response_cache_enabled = models.BooleanField(
        default=True, help_text="Answer identical requests from the response cache."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(credit_balance__gte=0), name="tenant_credit_balance_non_negative"
            )
        ]

    def __str__(self) -> str:
        return self.name

    # DRF treats the authenticated principal as request.user; a tenant is that principal.
    is_authenticated = True


class ApiKey(models.Model):
    """An API key; only its SHA-256 and a short non-secret prefix are stored."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="The key's first characters, for display.")
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


class LedgerEntry(models.Model):
    """One change of a tenant's balance. Append-only: corrections are new entries."""

    class Kind(models.TextChoices):
        TOP_UP = "top_up", "Top-up"
        HOLD = "hold", "Hold"
        SETTLE = "settle", "Settle"
        RELEASE = "release", "Release"
        ADJUSTMENT = "adjustment", "Adjustment"

    tenant = models.ForeignKey(  # indexed by (tenant, created_at)
        Tenant, on_delete=models.CASCADE, related_name="ledger", db_index=False
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # Signed change of the balance: negative for holds, positive for top-ups and releases.
    amount = models.DecimalField(**CREDIT_DIGITS)
    balance_after = models.DecimalField(**CREDIT_DIGITS)
    reference = models.CharField(max_length=100, blank=True)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        # Written with every hold and settlement: plain indexes, none a composite covers.
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["reference"], name="ledger_reference_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.tenant})"


class CreditHold(models.Model):
    """Credits reserved for one request until it is settled (or released by the sweeper).

    The hold's amount left the balance when it was taken (a ``hold`` ledger entry);
    closing it returns what was not charged. Every billed request of every transport has
    one, so closed holds are also the usage record (:mod:`billing.usage`).
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="holds")
    reference = models.CharField(max_length=100, blank=True)
    # The resolved model the request ran on; "" for holds taken before it was recorded.
    model = models.CharField(max_length=100, blank=True)
    amount = models.DecimalField(**CREDIT_DIGITS)
    charged = models.DecimalField(null=True, blank=True, **CREDIT_DIGITS)
    # The usage charged for, written when settled (a release leaves them at 0).
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    # The process serving the request renews this while it streams; once it lapses the
    # process is taken for dead and the sweeper closes the hold (billing.sweeper).
    lease_expires_at = models.DateTimeField(default=timezone.now)
    # The stored answer this hold pays for (None for stateless requests): its checkpoints
    # say what a dead process had generated. While the hold is open, a stateless
    # request's checkpoints are its token counts above.
    message_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["reference"], name="credithold_reference_idx"),
            # The sweeper's query: open holds by lease expiry.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="open"),
                name="credithold_open_lease_idx",
            ),
            # The usage report's range of days, which otherwise scans every hold ever
            # taken. Partial, so a reserve writes no entry to it; a settle writes one (it
            # changes indexed columns already, so it was no HOT update before either).
            models.Index(
                fields=["closed_at"],
                condition=Q(closed_at__isnull=False),
                name="credithold_closed_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.status} hold {self.amount} ({self.reference or self.pk})"
