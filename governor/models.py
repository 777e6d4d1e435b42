"""The governor's stored state: one policy per tenant and the append-only audit trail."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from billing.models import Tenant
from governor.detectors import KIND_PRIORITY
from governor.evaluation import (
    DECISIONS,
    ISO_3166_ALPHA2,
    MARKUP_ACTIONS,
    MarkupAction,
    Policy,
    ReviewMode,
)
from governor.rules import RULE_IDS
from governor.vocabulary import ACTION_TYPES, DEFAULT_SANCTIONED_COUNTRIES, RISK_LEVELS

RISK_LEVEL_CHOICES = [(level, level.capitalize()) for level in RISK_LEVELS]
DECISION_CHOICES = [(decision, decision.capitalize()) for decision in DECISIONS]
ACTION_TYPE_CHOICES = [(action, action.replace("_", " ").capitalize()) for action in ACTION_TYPES]


def default_disabled_rules() -> list[str]:
    return []


def default_output_redact() -> list[str]:
    return []


def default_sanctioned_countries() -> list[str]:
    return sorted(DEFAULT_SANCTIONED_COUNTRIES)


def default_allowed_roles() -> dict[str, list[str]]:
    return {}


def _check_rule_ids(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "Must be a list of rule ids."
    unknown = sorted(set(value) - RULE_IDS)
    if unknown:
        return f"Unknown rule ids: {', '.join(unknown)}. Known: {', '.join(sorted(RULE_IDS))}."
    return None


def _check_kinds(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"Must be a list of kinds; known: {', '.join(KIND_PRIORITY)}."
    unknown = sorted(set(value) - set(KIND_PRIORITY))
    if unknown:
        return f"Unknown kinds: {', '.join(unknown)}. Known: {', '.join(KIND_PRIORITY)}."
    return None


def _check_allowed_roles(value: Any) -> str | None:
    if not isinstance(value, dict):
        return 'Must be an object mapping an action type to a list of roles, e.g. {"legal_advice": ["lawyer"]}.'  # noqa: E501
    unknown = sorted(set(value) - set(ACTION_TYPES))
    if unknown:
        return f"Unknown action types: {', '.join(unknown)}. Known: {', '.join(ACTION_TYPES)}."
    for action_type, roles in value.items():
        if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
            return f"The roles for {action_type} must be a list of non-empty strings."
    return None


def _check_sanctioned_countries(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return 'Must be a list of ISO 3166-1 alpha-2 country codes, e.g. ["CU", "IR"].'
    unknown = sorted({v for v in value if v.upper() not in ISO_3166_ALPHA2})
    if unknown:
        return f"Not ISO 3166-1 alpha-2 country codes: {', '.join(unknown)}."
    return None


class GovernorPolicy(models.Model):
    """A tenant's governor policy; ``version`` goes up by one on every save.

    Created with the defaults (every rule on, refuse at critical risk, review
    actions approve and flag) the first time a tenant's request is checked. It stores the
    rules the tenant turned off, so a rule added to the code later is on for every tenant.
    """

    class ReviewMode(models.TextChoices):
        BLOCK = "block", "Block: a review action rejects the request"
        REVIEW = "review", "Review: approve, flag the record for human review"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="governor_policy")
    disabled_rules = models.JSONField(
        default=default_disabled_rules,
        blank=True,
        help_text="Rule ids turned off for this tenant; every other rule runs.",
    )
    block_threshold = models.CharField(
        max_length=10,
        choices=RISK_LEVEL_CHOICES,
        default="critical",
        help_text="Requests at or above this risk level are rejected.",
    )
    review_mode = models.CharField(
        max_length=10, choices=ReviewMode.choices, default=ReviewMode.REVIEW
    )
    allowed_roles = models.JSONField(
        default=default_allowed_roles,
        blank=True,
        help_text=(
            'Sender roles allowed per action type, e.g. {"legal_advice": ["lawyer", '
            '"paralegal"]}. Action types not listed are open to any role.'
        ),
    )
    sanctioned_countries = models.JSONField(
        default=default_sanctioned_countries,
        blank=True,
        help_text='Recipient countries that are always rejected, e.g. ["CU", "IR", "KP", "SY"].',
    )
    markup_action = models.CharField(
        max_length=10,
        choices=[(a, a.capitalize()) for a in MARKUP_ACTIONS],
        default="neutralise",
        help_text=(
            "Active markup (script tags, event handlers, javascript: URLs): neutralise it "
            "before it is stored, sent to a model or streamed; block the request; or flag it."
        ),
    )
    output_redact = models.JSONField(
        default=default_output_redact,
        blank=True,
        # Not naming every kind: a kind added to governor.detectors needs no migration.
        help_text='Kinds redacted from answers while they stream, e.g. ["secret", "card"].',
    )
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "governor policy"
        verbose_name_plural = "governor policies"
        ordering = ["tenant__name"]

    def __str__(self) -> str:
        return f"Policy of {self.tenant} (v{self.version})"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            # F(): two concurrent saves still make two versions.
            self.version = models.F("version") + 1
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "version", "updated_at"}
        super().save(*args, **kwargs)
        if isinstance(self.version, models.expressions.Combinable):
            self.refresh_from_db(fields=["version"])
        from governor.policies import policy_cache_invalidate

        tenant_id = self.tenant_id
        policy_cache_invalidate(tenant_id)
        # Again after commit, in case another thread cached the old row in between.
        transaction.on_commit(lambda: policy_cache_invalidate(tenant_id))

    def clean(self) -> None:
        errors = {}
        for name, check in (
            ("disabled_rules", _check_rule_ids),
            ("output_redact", _check_kinds),
            ("allowed_roles", _check_allowed_roles),
            ("sanctioned_countries", _check_sanctioned_countries),
        ):
            if message := check(getattr(self, name)):
                errors[name] = message
        if errors:
            raise ValidationError(errors)
        self.sanctioned_countries = sorted({c.upper() for c in self.sanctioned_countries})

    def to_policy(self) -> Policy:
        """The pure ``Policy`` the evaluation runs with.

        Rule ids and action types this code does not know (a rule renamed since the
        policy was saved) are left out rather than failing every request of the tenant.
        """
        return Policy(
            version=self.version,
            disabled_rules=frozenset(self.disabled_rules or ()) & RULE_IDS,
            block_threshold=self.block_threshold,
            review_mode=cast(ReviewMode, self.review_mode),  # the field's choices
            allowed_roles={
                action_type: roles
                for action_type, roles in (self.allowed_roles or {}).items()
                if action_type in ACTION_TYPES
            },
            sanctioned_countries=frozenset(self.sanctioned_countries or ()),
            output_redact=frozenset(self.output_redact or ()) & frozenset(KIND_PRIORITY),
            markup_action=cast(MarkupAction, self.markup_action),  # the field's choices
        )


class AppendOnlyError(Exception):
    """An attempt to change or delete what an audit record has recorded."""


# What may change on a stored audit record: the post-call (output) phase and the review.
OUTPUT_FIELDS = frozenset({"output_findings", "completed_at"})
REVIEW_FIELDS = frozenset({"reviewed_by", "review_decision", "review_note", "reviewed_at"})
MUTABLE_FIELDS = OUTPUT_FIELDS | REVIEW_FIELDS


def _field_names(names: Iterable[str]) -> set[str]:
    """Field names, with ``reviewed_by_id`` read as ``reviewed_by``."""
    return {"reviewed_by" if n == "reviewed_by_id" else n for n in names}


class AuditRecordQuerySet(models.QuerySet):
    def delete(self):
        raise AppendOnlyError("Audit records cannot be deleted.")

    delete.queryset_only = True  # type: ignore[attr-defined]  # a flag Django reads

    def update(self, **kwargs):
        fixed = _field_names(kwargs) - MUTABLE_FIELDS
        if fixed:
            raise AppendOnlyError(f"Audit records are append-only; cannot update {sorted(fixed)}.")
        return super().update(**kwargs)

    update.queryset_only = True  # type: ignore[attr-defined]  # a flag Django reads


class AuditRecord(models.Model):
    """One governor decision about one request. Append-only.

    Stored without raw personal data: the recipient's e-mail only masked and as
    a keyed hash, the input only as its SHA-256 and a redacted excerpt.
    """

    class ReviewDecision(models.TextChoices):
        APPROVED = "approved", "Approved: the content is acceptable"
        REJECTED = "rejected", "Rejected: the content is not acceptable"
        ESCALATED = "escalated", "Escalated: needs a further decision"

    EXCERPT_LENGTH = 500

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(  # indexed by (tenant, -created_at)
        Tenant, on_delete=models.PROTECT, related_name="governor_audit_records", db_index=False
    )
    request_id = models.CharField(max_length=128)
    model = models.CharField(max_length=200)
    # The request's governorMetadata (blank when none came).
    sender_id = models.CharField(max_length=255, blank=True)
    sender_role = models.CharField(max_length=255, blank=True)
    recipient_country = models.CharField(max_length=2, blank=True)
    recipient_user_id = models.CharField(max_length=255, blank=True)
    recipient_email_masked = models.CharField(max_length=255, blank=True)
    recipient_email_hash = models.CharField(
        max_length=64,
        blank=True,
        help_text="Keyed SHA-256 of the lower-cased address.",
    )
    action_type = models.CharField(max_length=32, choices=ACTION_TYPE_CHOICES, blank=True)
    department = models.CharField(max_length=255, blank=True)
    # The decision on the input.
    validated = models.BooleanField()
    approved = models.BooleanField()
    decision = models.CharField(max_length=10, choices=DECISION_CHOICES)
    risk_level = models.CharField(max_length=10, choices=RISK_LEVEL_CHOICES)
    risk_score = models.PositiveSmallIntegerField()
    violations = models.JSONField(default=list)
    policy_version = models.PositiveIntegerField()
    input_sha256 = models.CharField(max_length=64)
    excerpt = models.CharField(max_length=EXCERPT_LENGTH, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The output phase, after the call: the evaluation of the answer.
    output_findings = models.JSONField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Human review.
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    review_decision = models.CharField(max_length=10, choices=ReviewDecision.choices, blank=True)
    review_note = models.TextField(blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)

    objects = AuditRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # Each is written with every request: only those that queries use, and plain ones
        # (db_index on a CharField adds a pattern index for LIKE 'x%' on PostgreSQL).
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["request_id"], name="audit_request_id_idx"),
            models.Index(fields=["sender_id"], name="audit_sender_id_idx"),
            models.Index(fields=["recipient_email_hash"], name="audit_recipient_email_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.decision})"

    def save(self, *args, **kwargs) -> None:
        if self._state.adding:
            super().save(*args, **kwargs)
            return
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:
            fixed = _field_names(update_fields) - MUTABLE_FIELDS
            if fixed:
                raise AppendOnlyError(
                    f"Audit records are append-only; cannot change {sorted(fixed)}."
                )
        else:
            self._check_unchanged()
            kwargs["update_fields"] = sorted(MUTABLE_FIELDS)
        super().save(*args, **kwargs)

    def _check_unchanged(self) -> None:
        """Raise unless every recorded (non-mutable) field still equals the stored row."""
        fixed = [
            f.attname
            for f in self._meta.concrete_fields
            if not f.primary_key and _field_names([f.attname]).isdisjoint(MUTABLE_FIELDS)
        ]
        stored = type(self).objects.filter(pk=self.pk).values(*fixed).first()
        if stored is None:
            raise AppendOnlyError("Audit record does not exist; it cannot be updated.")
        changed = sorted(name for name in fixed if getattr(self, name) != stored[name])
        if changed:
            raise AppendOnlyError(f"Audit records are append-only; cannot change {changed}.")

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit records cannot be deleted.")

    @property
    def is_reviewed(self) -> bool:
        return self.reviewed_at is not None
