"""The governor as the streaming engine sees it: check a request before the provider is
called, check the output after the stream ends, and leave an audit record of both.

The engine calls :func:`governor_parse_metadata` while building a request,
:func:`governor_assess_input` and then :meth:`InputCheck.record` (with its own admission
writes) before the provider, and :func:`governor_check_output` once after the stream
ends. :func:`governor_check_input` is the first two in one call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from billing.models import Tenant
from chatproject.errors import ApiError, ErrorCode
from governor import policies, services
from governor.evaluation import GovernorMetadata, Policy, validate_metadata

logger = logging.getLogger(__name__)

METADATA_FIELD = "governorMetadata"


@dataclass(frozen=True)
class GateDecision:
    result: dict[str, Any] | None  # GovernorResult.to_dict(), None when not validated
    audit_id: str | None = None
    # What the output check needs from the input phase; not part of the result.
    metadata: GovernorMetadata | None = field(default=None, kw_only=True, repr=False)
    policy: Policy | None = field(default=None, kw_only=True, repr=False)

    def headers(self) -> dict[str, str]:
        """The seed's ``x-governor-*`` response headers."""
        if self.result is None:
            return {"x-governor-validated": "false"}
        headers = {
            "x-governor-validated": _flag(self.result["validated"]),
            "x-governor-approved": _flag(self.result["approved"]),
            "x-governor-risk-level": str(self.result["risk_level"]),
            "x-governor-risk-score": str(self.result["risk_score"]),
            "x-governor-violations": str(len(self.result["violations"])),
        }
        if self.audit_id is not None:
            headers["x-governor-audit-id"] = self.audit_id
        return headers


def _flag(value: bool) -> str:
    return "true" if value else "false"


def governor_parse_metadata(raw: Any) -> GovernorMetadata | None:
    """Validate a request's ``governorMetadata`` (None when absent).

    Raises ApiError(VALIDATION_ERROR) with ``details`` keyed ``governorMetadata.<field>``.
    """
    metadata, errors = validate_metadata(raw)
    if errors:
        details = {
            name if name == METADATA_FIELD else f"{METADATA_FIELD}.{name}": messages
            for name, messages in errors.items()
        }
        raise ApiError(ErrorCode.VALIDATION_ERROR, "Invalid governorMetadata.", details=details)
    return metadata


def _rejection_message(result: dict[str, Any]) -> str:
    blocking = sorted({v["rule"] for v in result["violations"] if v["action"] == "block"})
    reason = f"rule {', '.join(blocking)}" if blocking else f"risk level {result['risk_level']}"
    return f"The compliance governor rejected this request ({reason})."


def governor_check_input(
    *, tenant: Tenant, request_id: str, text: str, metadata: Any, model_name: str
) -> GateDecision:
    """Evaluate and audit a request; raises ApiError(GOVERNOR_REJECTED) when not approved.

    Sync (the engine runs it in a worker thread). Writes one audit record, also for a
    rejected request, so it must not run inside a transaction that the rejection rolls
    back. The tenant's policy comes from a short in-process cache.
    """
    return governor_assess_input(
        tenant=tenant, request_id=request_id, text=text, metadata=metadata, model_name=model_name
    ).record()


def governor_assess_input(
    *,
    tenant: Tenant,
    request_id: str,
    text: str,
    metadata: Any,
    model_name: str,
    cached_policy_only: bool = False,
) -> InputCheck | None:
    """:func:`governor_check_input` in two steps: this evaluates (and writes nothing but a
    tenant's first default policy); :meth:`InputCheck.record` writes the audit record, so
    the caller can send it along with its own writes.

    With ``cached_policy_only`` it touches no database (it may run on an event loop):
    None when this process has no fresh copy of the tenant's policy.
    """
    policy = None
    if cached_policy_only:
        policy = policies.policy_for_tenant_if_cached(tenant=tenant)
        if policy is None:
            return None
    if metadata is not None and not isinstance(metadata, GovernorMetadata):
        metadata = governor_parse_metadata(metadata)  # raw governorMetadata
    evaluated = services.governor_assess_input(
        tenant=tenant,
        request_id=request_id,
        text=text,
        metadata=metadata,
        model_name=model_name,
        policy=policy,
    )
    return InputCheck(evaluated=evaluated, request_id=request_id, metadata=metadata)


@dataclass(frozen=True)
class InputCheck:
    """An evaluated request whose audit record is not written yet."""

    evaluated: services.Evaluated
    request_id: str
    metadata: GovernorMetadata | None

    def record(self) -> GateDecision:
        """Write the audit record; the decision, or ApiError(GOVERNOR_REJECTED) once the
        record of the rejection is written."""
        evaluated = self.evaluated
        evaluated.record.save(force_insert=True)
        result = evaluated.result.to_dict()
        decision = GateDecision(
            result=result,
            audit_id=str(evaluated.record.pk),
            metadata=self.metadata,
            policy=evaluated.policy,
        )
        if not evaluated.result.approved:
            logger.info(
                "governor rejected request %s: audit %s, %s risk %s",
                self.request_id,
                decision.audit_id,
                result["risk_level"],
                result["risk_score"],
            )
            raise ApiError(
                ErrorCode.GOVERNOR_REJECTED,
                _rejection_message(result),
                details={**result, "audit_id": decision.audit_id},
                headers=decision.headers(),
            )
        return decision


def governor_check_output(*, decision: GateDecision, text: str) -> None:
    """Evaluate the answer (phase ``output``) and record its findings on the request's
    audit record. Post-hoc: the answer has been delivered, nothing is refused here."""
    if decision.audit_id is None:
        return
    result = services.governor_evaluate_output(
        audit_id=decision.audit_id,
        text=text,
        metadata=decision.metadata,
        policy=decision.policy,
    )
    if result.violations:
        logger.info(
            "governor output findings for audit %s: %s",
            decision.audit_id,
            ", ".join(sorted({v.rule for v in result.violations})),
        )
