"""The governor as the streaming engine sees it: check a request before the provider is
called, check the output after the stream ends, and leave an audit record of both.

The engine calls :func:`governor_parse_metadata` while building a request,
:func:`governor_assess_input` and then :meth:`InputCheck.record` (with its own admission
writes) before the provider, and :func:`governor_check_output` once after the stream
ends. A tool's result goes
through :func:`governor_check_tool_result` before it is put into the prompt.
:func:`output_guard` gives the engine the guard its tokens pass through while they stream
(None when the policy changes nothing in answers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from billing.models import Tenant
from chatproject.errors import ApiError, ErrorCode
from governor import policies, services
from governor.evaluation import (
    EvaluationInput,
    GovernorMetadata,
    GovernorResult,
    Policy,
    Violation,
    evaluate,
    validate_metadata,
)
from governor.injection import neutralise_markup
from governor.rule_base import Source
from governor.stream_guard import StreamGuard

logger = logging.getLogger(__name__)

METADATA_FIELD = "governorMetadata"


@dataclass(frozen=True)
class GateDecision:
    result: dict[str, Any] | None  # GovernorResult.to_dict(), None when not validated
    audit_id: str | None = None
    # What the output check needs from the input phase; not part of the result.
    metadata: GovernorMetadata | None = field(default=None, kw_only=True, repr=False)
    policy: Policy | None = field(default=None, kw_only=True, repr=False)
    # The input carried active markup and the policy neutralises it: see clean().
    neutralise: bool = field(default=False, kw_only=True)
    # Findings in what the server folded into the prompt after admission (tool results),
    # stored with the output findings.
    folded_findings: list[dict[str, Any]] = field(
        default_factory=list, kw_only=True, repr=False, compare=False
    )

    def clean(self, text: str) -> str:
        """``text`` as it may be stored and sent to a model: active markup made inert
        when the policy neutralises it and the input had some, else unchanged."""
        return neutralise_markup(text) if self.neutralise else text

    def clean_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """:meth:`clean` applied to each message's content (the same list when it changes
        nothing)."""
        if not self.neutralise:
            return messages
        return [{**m, "content": self.clean(m.get("content", ""))} for m in messages]

    def headers(self) -> dict[str, str]:
        """The ``x-governor-*`` response headers of /api/ai/chat."""
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


def governor_assess_input(
    *,
    tenant: Tenant,
    request_id: str,
    text: str | None = None,
    metadata: Any,
    model_name: str,
    cached_policy_only: bool = False,
    parts: Sequence[tuple[str, str]] = (),
    folded: Sequence[tuple[str, str]] = (),
) -> InputCheck | None:
    """Evaluate a request (writing nothing but a tenant's first default policy);
    :meth:`InputCheck.record` then writes the audit record, so the caller can send it
    along with its own writes, and raises ApiError(GOVERNOR_REJECTED) when not approved.
    The record must not be written inside a transaction that the rejection rolls back.

    The input is ``text``, or ``parts``: ``(source, text)`` pairs, the source naming where
    the text came from ("message 2 (user)", "existing_documents: a.md") in the findings.
    ``folded`` is text the server put into the prompt itself (knowledge-base chunks), as
    ``(source, text)``: only the injection rules read it.

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
    evaluated = services.governor_evaluate_unsaved(
        tenant=tenant,
        request_id=request_id,
        text=text,
        metadata=metadata,
        model_name=model_name,
        policy=policy,
        parts=parts,
        folded=folded,
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
        self.evaluated.record.save(force_insert=True)
        return self.decide()

    @property
    def approved(self) -> bool:
        return self.evaluated.result.approved

    def decide(self) -> GateDecision:
        """The decision, or ApiError(GOVERNOR_REJECTED): call once the audit record
        (``evaluated.record``, its key set already) is written."""
        evaluated = self.evaluated
        result = evaluated.result.to_dict()
        decision = GateDecision(
            result=result,
            audit_id=str(evaluated.record.pk),
            metadata=self.metadata,
            policy=evaluated.policy,
            neutralise=any(v.action == "neutralise" for v in evaluated.result.violations),
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


@dataclass(frozen=True)
class FoldedCheck:
    """What :func:`governor_check_tool_result` found in a text, and the text to use."""

    text: str  # what may go into the prompt: active markup neutralised, unless only flagged
    violations: tuple[Violation, ...]

    @property
    def injection(self) -> bool:
        """Whether the text tries to instruct the model (the caller may leave it out)."""
        return any(v.rule == "prompt_injection" for v in self.violations)


_FOLDED_RULES = frozenset({"prompt_injection", "markup_injection"})


def governor_check_tool_result(*, decision: GateDecision, tool_name: str, text: str) -> FoldedCheck:
    """Check a tool's result before it goes into the prompt (indirect injection): the
    prompt-injection and markup rules of the request's policy, each finding naming
    ``tool result: <tool_name>`` as its source. CPU only, no I/O: the findings are kept
    with ``decision`` and stored on the audit record with the output findings when the
    answer is finalised. Markup is neutralised in the returned text unless the policy only
    flags it (a generation under way cannot be refused, so ``block`` neutralises too)."""
    policy = decision.policy or Policy.default()
    source = f"tool result: {tool_name}"
    rules = [
        rule
        for rule in policy.rules
        if rule.id in _FOLDED_RULES and rule.id not in policy.disabled_rules
    ]
    inp = EvaluationInput(text="", metadata=decision.metadata, folded=((source, text),))
    violations = tuple(v for rule in rules for v in rule.check(inp))
    decision.folded_findings.extend(v.to_dict() for v in violations)
    markup = any(v.rule == "markup_injection" for v in violations)
    if markup and policy.markup_action != "flag":
        text = neutralise_markup(text)
    return FoldedCheck(text=text, violations=violations)


def output_guard(decision: GateDecision) -> StreamGuard | None:
    """The guard an answer streams through under the request's policy: it redacts the
    policy's ``output_redact`` kinds and neutralises active markup (unless the policy only
    flags markup, or has turned ``markup_injection`` off). None when it would change nothing."""
    policy = decision.policy
    if policy is None:
        return None
    markup = policy.markup_action != "flag" and "markup_injection" not in policy.disabled_rules
    guard = StreamGuard(redact=policy.output_redact, neutralise_markup=markup)
    return guard if guard.active else None


def governor_check_tool_text(
    decision: GateDecision, tool_name: str, text: str, direction: str
) -> tuple[str, str | None]:
    """A server tool call's ``arguments`` going out, or its ``result`` coming back, as the
    governor lets it through: (the text to use, why it is withheld or None). A result is
    checked for injection first (:func:`governor_check_tool_result`: markup neutralised,
    an attempt to instruct the model withheld); both are then evaluated like a request
    (personal data, secrets...) and withheld when the policy would refuse that. CPU only."""
    what = "arguments" if direction == "arguments" else "result"
    withheld = f"The compliance governor withheld this tool call's {what}"
    if direction == "result":
        folded = governor_check_tool_result(decision=decision, tool_name=tool_name, text=text)
        if folded.injection:
            return text, f"{withheld} (prompt_injection)."
        text = folded.text
    if decision.policy is None:
        return text, None
    source = Source(f"tool {what}: {tool_name}", 0, len(text))
    inp = EvaluationInput(text=text, metadata=decision.metadata, sources=(source,))
    result = evaluate(inp, decision.policy)
    if result.approved:
        return text, None
    rules = ", ".join(sorted({v.rule for v in result.violations})) or result.risk_level
    return text, f"{withheld} ({rules})."


def governor_check_output(
    *,
    decision: GateDecision,
    text: str,
    guard: StreamGuard | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    model_name: str | None = None,
) -> None:
    """Evaluate the answer (phase ``output``) and record its findings on the request's
    audit record, with what ``guard`` changed while it streamed and the answer's tool calls
    (name, id, and whether they ran); ``model_name`` when another model than the one
    recorded at input answered. Post-hoc: the answer has been delivered, nothing is
    refused here."""
    if decision.audit_id is None:
        return
    result = services.governor_evaluate_output(
        audit_id=decision.audit_id,
        text=text,
        **_output_inputs(decision, guard, tool_calls, model_name),
    )
    _log_output_findings(decision.audit_id, result)


def governor_assess_output(
    *,
    decision: GateDecision,
    text: str,
    guard: StreamGuard | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    model_name: str | None = None,
) -> dict[str, Any] | None:
    """:func:`governor_check_output` without the write: the findings to store on the
    audit record (``output_findings``, with ``completed_at``), or None when the request
    has no record. CPU only, for a caller that sends the UPDATE with its own writes; needs
    the input phase's policy on ``decision``."""
    if decision.audit_id is None:
        return None
    assert decision.policy is not None  # set by the input phase
    result, findings = services.governor_output_findings(
        text=text, **_output_inputs(decision, guard, tool_calls, model_name)
    )
    _log_output_findings(decision.audit_id, result)
    return findings


def _output_inputs(
    decision: GateDecision,
    guard: StreamGuard | None,
    tool_calls: list[dict[str, Any]] | None,
    model_name: str | None,
) -> dict[str, Any]:
    return {
        "metadata": decision.metadata,
        "policy": decision.policy,
        "streamed": guard.report() if guard is not None else None,
        "folded": decision.folded_findings,
        "tool_calls": [_audited_call(call) for call in tool_calls or ()],
        "model_name": model_name,
    }


def _log_output_findings(audit_id: str, result: GovernorResult) -> None:
    if result.violations:
        logger.info(
            "governor output findings for audit %s: %s",
            audit_id,
            ", ".join(sorted({v.rule for v in result.violations})),
        )


def _audited_call(call: dict[str, Any]) -> dict[str, Any]:
    """What the audit record keeps of a tool call: never the raw arguments or result,
    their redacted excerpts."""
    status = "error" if "error" in call else "ok" if "output" in call else "client"
    audited = {
        "id": call["id"],
        "name": call["name"],
        "status": status,
        "arguments": services.redacted_excerpt(call["arguments"], 200),
    }
    if "error" in call:
        audited["error"] = services.redacted_excerpt(call["error"], 200)
    return audited
