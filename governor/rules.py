"""Compliance rules of the governor: small objects with a pure ``check``.

A rule (``governor.rule_base``) looks at one ``EvaluationInput`` (the text of one phase
plus the request's governor metadata) and returns ``Violation``s. Each violation carries
the points it adds to the risk score, so that every point of a score can be traced to a
rule. A rule's points count once however often it fires: the first occurrence (lowest
span) carries them, further occurrences are listed with 0 points. Explanations say what
matched and where (the source of the text: a message, a document the client sent, a
knowledge-base chunk, a tool result) but never quote the detected value, so results can
be logged and audited safely.

The injection rules (``prompt_injection``, ``markup_injection``) also read the text the
server folds into a prompt (``EvaluationInput.folded``): retrieved documents and tool
results can carry instructions too (indirect injection).

No Django, no I/O: the rules are trivially testable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from governor.detectors import Finding
from governor.injection import Match, find_markup, find_prompt_injection
from governor.rule_base import EvaluationInput, Rule, Violation
from governor.vocabulary import (
    ACTION_TYPE_RISK,
    BASE_POINTS,
    DEFAULT_SANCTIONED_COUNTRIES,
    EU_EEA_COUNTRIES,
    PERSONAL_DATA_KINDS,
)

__all__ = [
    "RULE_IDS",
    "ActionTypeRiskRule",
    "AutomatedDecisionRule",
    "GdprRecipientRule",
    "MarkupInjectionRule",
    "MedicalIdentifierRule",
    "PersonalDataRule",
    "PromptInjectionRule",
    "SanctionedDestinationRule",
    "SecretRule",
    "SenderRoleRule",
    "build_rules",
]


def _kinds_found(ctx: EvaluationInput, kinds: Iterable[str]) -> list[Finding]:
    findings = ctx.findings
    if not findings:
        return []
    wanted = frozenset(kinds)
    return [f for f in findings if f.kind in wanted]


@dataclass(frozen=True, kw_only=True)
class ActionTypeRiskRule(Rule):
    """Base risk of the action type, reported as an informational (``allow``) violation.

    Medium types add 25 points, high types 50; low types add nothing and report
    nothing. The violation's severity is the type's risk (``severity`` here is the
    highest it can report).
    """

    id: str = "action_type_risk"
    severity: str = "high"
    action: str = "allow"
    points: int = BASE_POINTS["high"]

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        if ctx.metadata is None:
            return []
        risk = ACTION_TYPE_RISK.get(ctx.metadata.action_type, "low")
        if BASE_POINTS[risk] == 0:
            return []
        return [
            Violation(
                rule=self.id,
                severity=risk,
                explanation=f"Action type {ctx.metadata.action_type} carries {risk} base risk.",
                span=None,
                points=BASE_POINTS[risk],
                action=self.action,
            )
        ]


@dataclass(frozen=True, kw_only=True)
class PersonalDataRule(Rule):
    """One violation per finding of ``kind`` in the text; ``label`` names it with its article."""

    kind: str
    label: str

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        found = [
            (f"The {ctx.phase} contains {self.label}{ctx.where_phrase(f.start)}.", (f.start, f.end))
            for f in _kinds_found(ctx, [self.kind])
        ]
        return self._violations(found, ctx=ctx)


@dataclass(frozen=True, kw_only=True)
class SecretRule(PersonalDataRule):
    """Credentials (API keys, tokens, private keys) must never pass."""

    id: str = "secret_credential"
    severity: str = "critical"
    action: str = "block"
    points: int = 60
    kind: str = "secret"
    label: str = "a credential (API key, token, password or private key)"


@dataclass(frozen=True, kw_only=True)
class GdprRecipientRule(Rule):
    """Personal data addressed to an EU/EEA recipient falls under the GDPR."""

    id: str = "gdpr_eu_recipient"
    severity: str = "medium"
    action: str = "flag"
    points: int = 15

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        country = ctx.metadata.recipient_country if ctx.metadata else None
        if country not in EU_EEA_COUNTRIES:
            return []
        kinds = sorted({f.kind for f in _kinds_found(ctx, PERSONAL_DATA_KINDS)})
        if not kinds:
            return []
        return self._violations(
            [
                (
                    f"Personal data ({', '.join(kinds)}) for a recipient in {country} "
                    "(EU/EEA): GDPR applies.",
                    None,
                )
            ]
        )


@dataclass(frozen=True, kw_only=True)
class SanctionedDestinationRule(Rule):
    """Nothing may be sent to a recipient in a sanctioned country."""

    id: str = "sanctioned_destination"
    severity: str = "critical"
    action: str = "block"
    points: int = 60
    countries: frozenset[str] = DEFAULT_SANCTIONED_COUNTRIES

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        country = ctx.metadata.recipient_country if ctx.metadata else None
        if country is None or country not in self.countries:
            return []
        return self._violations([(f"The recipient country {country} is sanctioned.", None)])


@dataclass(frozen=True, kw_only=True)
class MedicalIdentifierRule(Rule):
    """Medical advice must not carry patient identifiers (MBI, MRN, NHS number, ICD-10 code)."""

    id: str = "medical_health_identifier"
    severity: str = "high"
    action: str = "redact"
    points: int = 30

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        if ctx.metadata is None or ctx.metadata.action_type != "medical_advice":
            return []
        found = [
            (
                f"Medical advice {ctx.phase} contains a health identifier"
                f"{ctx.where_phrase(f.start)}.",
                (f.start, f.end),
            )
            for f in _kinds_found(ctx, ["health_id"])
        ]
        return self._violations(found, ctx=ctx)


# Wording of a decision about a person's employment.
_EMPLOYMENT_DECISION_RE = re.compile(
    r"\b(?:terminat\w*|dismiss\w*|fired|lay(?:ing)?\s+off|laid\s+off|redundan\w*|demot\w*|"
    r"promot\w*|hire[ds]?|hiring\s+decision|not\s+(?:been\s+)?selected|reject\w*|"
    r"job\s+offer|offer\s+of\s+employment|disciplinary|(?:final|formal|written)\s+warning|"
    r"suspen\w*|probation\w*|(?:salary|pay)\s+(?:cut|reduction|increase|rise)|"
    r"contract\s+(?:will\s+not|won't)\s+be\s+renewed)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, kw_only=True)
class AutomatedDecisionRule(Rule):
    """Decisions about a person go to a human (EU AI Act high-risk; GDPR art. 22).

    Every ``suspension`` decides about an account holder. An ``hr_message``
    counts when its text words an employment decision (hiring, dismissal,
    promotion, discipline, pay).
    """

    id: str = "automated_decision_review"
    severity: str = "high"
    action: str = "review"
    points: int = 20

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        action_type = ctx.metadata.action_type if ctx.metadata else None
        if action_type == "suspension":
            reason = "An account suspension decides about a person"
        elif action_type == "hr_message" and _EMPLOYMENT_DECISION_RE.search(ctx.text):
            reason = "An HR message deciding about employment is high-risk (EU AI Act)"
        else:
            return []
        return self._violations([(f"{reason}; a human must review it (GDPR art. 22).", None)])


@dataclass(frozen=True, kw_only=True)
class SenderRoleRule(Rule):
    """Advice of a restricted action type from a role the policy does not allow.

    ``allowed_roles`` maps an action type to the roles allowed to send it
    (compared case-insensitively); an action type absent from it is open to any
    role. A missing ``senderRole`` is not allowed where the type is restricted.
    """

    id: str = "sender_role_not_allowed"
    severity: str = "high"
    action: str = "block"
    points: int = 25
    allowed_roles: Mapping[str, Iterable[str]] = field(default_factory=dict, hash=False)

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        if ctx.metadata is None or ctx.metadata.action_type not in self.allowed_roles:
            return []
        action_type, role = ctx.metadata.action_type, ctx.metadata.sender_role
        allowed = {r.casefold() for r in self.allowed_roles[action_type]}
        if role is not None and role.casefold() in allowed:
            return []
        who = f"sender role {role}" if role else "a sender without a role"
        return self._violations([(f"The policy does not allow {who} to send {action_type}.", None)])


@dataclass(frozen=True, kw_only=True)
class _InjectionRule(Rule):
    """A rule over the text and everything folded into the prompt; ``_find`` detects."""

    def _find(self, text: str) -> list[Match]:
        raise NotImplementedError

    def _explain(self, ctx: EvaluationInput, match: Match, where: str) -> str:
        raise NotImplementedError

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        own = [
            (self._explain(ctx, m, ctx.where_phrase(m.start)), (m.start, m.end))
            for m in self._find(ctx.text)
        ]
        folded = [
            (self._explain(ctx, m, f" in {source}"), (m.start, m.end), source)
            for source, text in ctx.folded
            for m in self._find(text)
        ]
        return self._violations(own, folded, ctx=ctx)


@dataclass(frozen=True, kw_only=True)
class PromptInjectionRule(_InjectionRule):
    """Text that tries to override the model's instructions, reveal its system prompt,
    jailbreak it by role-play, forge role or delimiter tags, or address instructions to
    the AI from inside quoted material (an e-mail, a document, a tool result)."""

    id: str = "prompt_injection"
    severity: str = "high"
    action: str = "flag"
    points: int = 35

    def check(self, ctx: EvaluationInput) -> list[Violation]:
        # An answer is what the model said, not text that could steer it: injection is
        # looked for where text goes into a prompt (the request, what the server folds
        # in, tool results), not in answers, which would cost every token its scan.
        return [] if ctx.phase == "output" else super().check(ctx)

    def _find(self, text: str) -> list[Match]:
        return find_prompt_injection(text)

    def _explain(self, ctx: EvaluationInput, match: Match, where: str) -> str:
        return f"Prompt injection{where}: {match.label}."


_MARKUP_OUTCOME = {
    "neutralise": "neutralised before it is stored, sent to a model or streamed",
    "block": "the policy blocks it",
    "flag": "flagged only, passed on unchanged",
}


@dataclass(frozen=True, kw_only=True)
class MarkupInjectionRule(_InjectionRule):
    """Markup that would run script in a browser (XSS): script-like tags, event-handler
    attributes, javascript:/vbscript:/active data: URLs. ``action`` is the policy's
    ``markup_action``: ``neutralise``, ``block`` or ``flag``."""

    id: str = "markup_injection"
    severity: str = "high"
    action: str = "neutralise"
    points: int = 30

    def _find(self, text: str) -> list[Match]:
        return find_markup(text)

    def _explain(self, ctx: EvaluationInput, match: Match, where: str) -> str:
        return f"Active markup{where}: {match.label}; {_MARKUP_OUTCOME[self.action]}."


def _personal_data_rules() -> tuple[Rule, ...]:
    return (
        PersonalDataRule(
            id="pii_card", kind="card", label="a payment card number",
            severity="high", action="redact", points=30,
        ),
        PersonalDataRule(
            id="pii_ssn", kind="ssn", label="a US social security number",
            severity="high", action="redact", points=30,
        ),
        PersonalDataRule(
            id="pii_iban", kind="iban", label="a bank account number (IBAN)",
            severity="medium", action="redact", points=20,
        ),
        PersonalDataRule(
            id="pii_email", kind="email", label="an e-mail address",
            severity="low", action="flag", points=5,
        ),
        PersonalDataRule(
            id="pii_phone", kind="phone", label="a phone number",
            severity="low", action="flag", points=5,
        ),
    )  # fmt: skip


def build_rules(
    *,
    allowed_roles: Mapping[str, Iterable[str]] | None = None,
    sanctioned_countries: frozenset[str] = DEFAULT_SANCTIONED_COUNTRIES,
    markup_action: str = "neutralise",
) -> tuple[Rule, ...]:
    """Every rule, configured with a policy's roles, sanctioned countries and markup action."""
    return (
        ActionTypeRiskRule(),
        *_personal_data_rules(),
        SecretRule(),
        GdprRecipientRule(),
        SanctionedDestinationRule(countries=sanctioned_countries),
        MedicalIdentifierRule(),
        AutomatedDecisionRule(),
        SenderRoleRule(allowed_roles=allowed_roles or {}),
        PromptInjectionRule(),
        MarkupInjectionRule(action=markup_action),
    )


RULE_IDS = frozenset(rule.id for rule in build_rules())
