"""Writes of the governor: evaluate-and-audit, the output phase, reviews, policy updates."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from django.utils.crypto import salted_hmac

from billing.models import Tenant
from chatproject import instances
from governor import detectors
from governor.evaluation import (
    EvaluationInput,
    GovernorMetadata,
    GovernorResult,
    Policy,
    evaluate,
)
from governor.models import AuditRecord, GovernorPolicy
from governor.policies import policy_for_tenant, policy_get_or_create

_EMAIL_HASH_SALT = "governor.AuditRecord.recipient_email"


def recipient_email_hash(email: str) -> str:
    """Keyed SHA-256 of an address: the same address always maps to the same value,
    but the value cannot be reversed by hashing guessed addresses without the key."""
    return salted_hmac(_EMAIL_HASH_SALT, email.strip().lower(), algorithm="sha256").hexdigest()


def mask_email(email: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``."""
    local, _, domain = email.strip().rpartition("@")
    return f"{local[:1]}***@{domain}" if local else "***"


def storable(value: str) -> str:
    """``value`` without what a database text column refuses (NUL, lone surrogates)."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def redacted_excerpt(text: str, limit: int = AuditRecord.EXCERPT_LENGTH) -> str:
    """``text`` with every detected personal-data and secret span redacted, cut to ``limit``."""
    redacted = storable(detectors.redact(text, detectors.scan(text)))
    if len(redacted) <= limit:
        return redacted
    cut = redacted[: limit - 1]
    # Do not leave half a "[REDACTED:kind]" marker at the end.
    marker = cut.rfind("[REDACTED:")
    if marker != -1 and "]" not in cut[marker:]:
        cut = cut[:marker]
    return cut + "…"


def _metadata_fields(metadata: GovernorMetadata | None) -> dict[str, str]:
    if metadata is None:
        return {}
    email = metadata.recipient_email
    # Free text a client fills in: redacted like the excerpt (a key pasted as the sender
    # id is not stored), within the columns' 255 characters.
    free_text = {
        "sender_id": metadata.sender_id,
        "sender_role": metadata.sender_role or "",
        "recipient_user_id": metadata.recipient_user_id or "",
        "department": metadata.department or "",
    }
    fields = {
        "recipient_country": metadata.recipient_country or "",
        "recipient_email_masked": mask_email(email) if email else "",
        "recipient_email_hash": recipient_email_hash(email) if email else "",
        "action_type": metadata.action_type,
    }
    return {name: redacted_excerpt(value, limit=255) for name, value in free_text.items()} | {
        name: storable(value) for name, value in fields.items()
    }


def metadata_from_record(record: AuditRecord) -> GovernorMetadata | None:
    """The metadata a record was evaluated with, as far as the record keeps it.

    The recipient's e-mail is not kept; no rule reads it.
    """
    if not record.action_type:
        return None
    return GovernorMetadata(
        action_type=record.action_type,
        sender_id=record.sender_id,
        sender_role=record.sender_role or None,
        recipient_country=record.recipient_country or None,
        recipient_user_id=record.recipient_user_id or None,
        department=record.department or None,
    )


@dataclass(frozen=True)
class Evaluated:
    result: GovernorResult
    record: AuditRecord
    policy: Policy


def governor_evaluate_input(
    *,
    tenant: Tenant,
    request_id: str,
    text: str | None = None,
    metadata: GovernorMetadata | None,
    model_name: str,
    parts: Sequence[tuple[str, str]] = (),
) -> Evaluated:
    """Evaluate a request's text (or its named ``parts``) with the tenant's policy and
    write its audit record.

    One INSERT (plus, on a tenant's very first request, its default policy).
    """
    evaluated = governor_evaluate_unsaved(
        tenant=tenant,
        request_id=request_id,
        text=text,
        metadata=metadata,
        model_name=model_name,
        parts=parts,
    )
    evaluated.record.save(force_insert=True)
    return evaluated


def governor_evaluate_unsaved(
    *,
    tenant: Tenant,
    request_id: str,
    text: str | None = None,
    metadata: GovernorMetadata | None,
    model_name: str,
    policy: Policy | None = None,
    parts: Sequence[tuple[str, str]] = (),
    folded: Sequence[tuple[str, str]] = (),
) -> Evaluated:
    """:func:`governor_evaluate_input` with its audit record built but not yet saved, so the
    caller can send the INSERT along with its own writes. Writes nothing (but a tenant's
    default policy, on its very first request); with ``policy`` given, reads nothing.

    The input is ``text``, or ``parts``, ``(source, text)`` pairs naming where each piece
    came from; ``folded`` is what the server itself put into the prompt (knowledge-base
    chunks), which only the injection rules read."""
    policy = policy or policy_for_tenant(tenant=tenant)
    if text is not None:
        parts = [("", text)]
    inp = EvaluationInput.from_parts(parts, metadata, "input", folded)
    text = inp.text
    result = evaluate(inp, policy)
    record = instances.build(  # positionally: made on every request
        AuditRecord,
        tenant=tenant,
        request_id=storable(request_id[:128]),
        model=storable(model_name[:200]),
        **_metadata_fields(metadata),
        validated=result.validated,
        approved=result.approved,
        decision=result.decision,
        risk_level=result.risk_level,
        risk_score=result.risk_score,
        violations=[v.to_dict() for v in result.violations],
        policy_version=result.policy_version,
        input_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        excerpt=redacted_excerpt(text),
    )
    return Evaluated(result=result, record=record, policy=policy)


def output_findings(
    result: GovernorResult,
    streamed: dict[str, int] | None = None,
    folded: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the output phase stores on the record; ``streamed``: spans per kind that the
    output guard redacted (or, for ``markup``, neutralised) before they were sent;
    ``folded``: violations found in tool results put into the prompt meanwhile."""
    data = result.to_dict()
    data.pop("validated")
    if streamed:
        data["changed_while_streaming"] = streamed
    if folded:
        data["tool_results"] = folded
    return data


def governor_evaluate_output(
    *,
    audit_id: str,
    text: str,
    metadata: GovernorMetadata | None = None,
    policy: Policy | None = None,
    streamed: dict[str, int] | None = None,
    folded: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    model_name: str | None = None,
) -> GovernorResult:
    """Evaluate an answer (phase ``output``) and store the findings on the request's record,
    with the answer's ``tool_calls`` when it made any, and as ``answered_by`` the model
    that answered when ``model_name`` says it was another than the one recorded.

    With ``metadata`` and ``policy`` from the input phase this is one UPDATE; without
    them they are recovered from the record (and the tenant's current policy).
    """
    if policy is None:
        record = AuditRecord.objects.select_related("tenant").get(pk=audit_id)
        metadata = metadata_from_record(record)
        policy = policy_for_tenant(tenant=record.tenant)
    result, findings = governor_output_findings(
        text=text,
        metadata=metadata,
        policy=policy,
        streamed=streamed,
        folded=folded,
        tool_calls=tool_calls,
        model_name=model_name,
    )
    AuditRecord.objects.filter(pk=audit_id).update(
        output_findings=findings, completed_at=timezone.now()
    )
    return result


def governor_output_findings(
    *,
    text: str,
    metadata: GovernorMetadata | None,
    policy: Policy,
    streamed: dict[str, int] | None = None,
    folded: list[dict[str, Any]] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    model_name: str | None = None,
) -> tuple[GovernorResult, dict[str, Any]]:
    """The answer evaluated, and what :func:`governor_evaluate_output` stores of it on the
    audit record (``output_findings``). CPU only."""
    result = evaluate(EvaluationInput(text=text, metadata=metadata, phase="output"), policy)
    findings = output_findings(result, streamed, folded)
    if tool_calls:
        findings["tool_calls"] = tool_calls
    if model_name:  # the record is append-only: its model stays the one asked for
        findings["answered_by"] = storable(model_name[:200])
    return result, findings


def audit_record_review(
    *,
    record: AuditRecord,
    reviewer: User,
    decision: str,
    note: str = "",
) -> AuditRecord:
    """Record a human review: sets only the review fields (reviewer and time included)."""
    if decision not in AuditRecord.ReviewDecision.values:
        raise ValueError(f"Unknown review decision {decision!r}.")
    record.reviewed_by = reviewer
    record.review_decision = decision
    record.review_note = note
    record.reviewed_at = timezone.now()
    record.save(update_fields=["reviewed_by", "review_decision", "review_note", "reviewed_at"])
    return record


def policy_update(*, tenant: Tenant, **changes: Any) -> GovernorPolicy:
    """Change a tenant's policy (validated like the admin form); the version goes up by one."""
    policy = policy_get_or_create(tenant=tenant)
    for name, value in changes.items():
        setattr(policy, name, value)
    policy.full_clean()
    policy.save()
    return policy
