"""Pure evaluation of a request against a governor policy.

``evaluate(inp, policy)`` runs the policy's rules over one ``EvaluationInput``
and turns their violations into a ``GovernorResult``:

- score: the sum of every violation's points (the action type's base points are
  the ``action_type_risk`` rule's violation), capped at 100;
- level: <25 low, 25-49 medium, 50-74 high, >=75 critical; any critical
  violation makes the level critical;
- approved: false when a violation's action is ``block``, when the level
  reaches ``policy.block_threshold``, or when a ``review`` action fires and
  ``policy.review_mode`` is ``"block"``;
- decision: ``rejected`` when not approved, else ``review`` when a review
  action fired, else ``flagged`` when any violation asks to flag, redact or neutralise,
  else ``approved``.

No Django, no I/O; deterministic, and independent of rule order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from governor.detectors import KIND_PRIORITY, is_valid_email
from governor.rule_base import EvaluationInput, GovernorMetadata, Rule, Violation
from governor.rules import RULE_IDS, build_rules
from governor.vocabulary import (
    ACTION_TYPES,
    DEFAULT_SANCTIONED_COUNTRIES,
    RISK_LEVELS,
    severity_rank,
)

__all__ = [
    "ACTION_TYPES",
    "DECISIONS",
    "ISO_3166_ALPHA2",
    "MARKUP_ACTIONS",
    "RISK_LEVELS",
    "EvaluationInput",
    "GovernorMetadata",
    "GovernorResult",
    "Policy",
    "Violation",
    "evaluate",
    "evaluate_with_rules",
    "risk_level_for_score",
    "validate_metadata",
]

DECISIONS = ("approved", "flagged", "review", "rejected")
MARKUP_ACTIONS = ("neutralise", "block", "flag")
MarkupAction = Literal["neutralise", "block", "flag"]
ReviewMode = Literal["block", "review"]
Decision = Literal["approved", "flagged", "review", "rejected"]

# ISO 3166-1 alpha-2, the 249 officially assigned codes.
_ISO_CODES = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_3166_ALPHA2 = frozenset(_ISO_CODES.split())

_MAX_FIELD_LENGTH = 255


def risk_level_for_score(score: int) -> str:
    """Risk level of a 0-100 score."""
    if score >= 75:
        return "critical"
    if score >= 50:
        return "high"
    if score >= 25:
        return "medium"
    return "low"


@dataclass(frozen=True)
class Policy:
    """A tenant's governor policy.

    ``disabled_rules`` are the rules the tenant turned off (every other rule runs, rules
    added later included); ``block_threshold`` is the risk
    level from which approval is refused; ``review_mode`` says whether a
    ``review`` action refuses (``"block"``) or approves and flags for review
    (``"review"``); ``allowed_roles`` maps an action type to the sender roles
    allowed to send it (absent types are open to any role); ``output_redact`` names the
    detector kinds redacted from answers while they stream; ``markup_action`` says what
    active markup (``markup_injection``) gets: ``neutralise`` (made inert before it is
    stored, sent to a model or streamed), ``block`` (the request is refused; answers are
    neutralised) or ``flag`` (reported only).
    """

    version: int = 1
    disabled_rules: frozenset[str] = frozenset()
    block_threshold: str = "critical"
    review_mode: ReviewMode = "review"
    allowed_roles: Mapping[str, Iterable[str]] = field(default_factory=dict, hash=False)
    sanctioned_countries: frozenset[str] = DEFAULT_SANCTIONED_COUNTRIES
    output_redact: frozenset[str] = frozenset()
    markup_action: MarkupAction = "neutralise"

    def __post_init__(self) -> None:
        if self.block_threshold not in RISK_LEVELS:
            raise ValueError(f"block_threshold must be one of {RISK_LEVELS}")
        if self.review_mode not in ("block", "review"):
            raise ValueError("review_mode must be 'block' or 'review'")
        unknown = set(self.disabled_rules) - RULE_IDS
        if unknown:
            raise ValueError(f"unknown rule ids: {sorted(unknown)}")
        object.__setattr__(self, "disabled_rules", frozenset(self.disabled_rules))
        unknown_types = set(self.allowed_roles) - set(ACTION_TYPES)
        if unknown_types:
            raise ValueError(f"unknown action types in allowed_roles: {sorted(unknown_types)}")
        # Copies, so a caller mutating its dict or list cannot change a frozen policy.
        roles = {k: tuple(v) for k, v in self.allowed_roles.items()}
        object.__setattr__(self, "allowed_roles", roles)
        countries = frozenset(c.upper() for c in self.sanctioned_countries)
        object.__setattr__(self, "sanctioned_countries", countries)
        if self.markup_action not in MARKUP_ACTIONS:
            raise ValueError(f"markup_action must be one of {MARKUP_ACTIONS}")
        unknown_kinds = set(self.output_redact) - set(KIND_PRIORITY)
        if unknown_kinds:
            raise ValueError(f"unknown kinds in output_redact: {sorted(unknown_kinds)}")
        object.__setattr__(self, "output_redact", frozenset(self.output_redact))

    @property
    def enabled_rules(self) -> frozenset[str]:
        """The rules that run."""
        return RULE_IDS - self.disabled_rules

    @classmethod
    def default(cls) -> Policy:
        """Every rule on, refuse at critical risk, review actions approve but flag."""
        return cls()

    @cached_property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule, configured with this policy: built once per policy, which is
        frozen and cached per tenant (:mod:`governor.policies`), not once per request."""
        return build_rules(
            allowed_roles=self.allowed_roles,
            sanctioned_countries=self.sanctioned_countries,
            markup_action=self.markup_action,
        )


@dataclass(frozen=True)
class GovernorResult:
    """The governor's verdict on one evaluation."""

    validated: bool
    approved: bool
    decision: Decision
    risk_level: str
    risk_score: int
    violations: tuple[Violation, ...]
    policy_version: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (violation spans as 2-lists or null)."""
        return {
            "validated": self.validated,
            "approved": self.approved,
            "decision": self.decision,
            "risk_level": self.risk_level,
            "risk_score": self.risk_score,
            "violations": [v.to_dict() for v in self.violations],
            "policy_version": self.policy_version,
        }


def _canonical_key(v: Violation) -> tuple:
    # Most severe first, then by rule and position: independent of rule order.
    return (-severity_rank(v.severity), v.rule, v.span or (-1, -1), v.explanation, v.points)


def evaluate_with_rules(
    inp: EvaluationInput, policy: Policy, rules: Iterable[Rule]
) -> GovernorResult:
    """``evaluate`` with an explicit rule list (the policy's ``disabled_rules`` still apply)."""
    violations: list[Violation] = []
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise ValueError(f"duplicate rule id {rule.id!r}")
        seen.add(rule.id)
        if rule.id not in policy.disabled_rules:
            violations.extend(rule.check(inp))
    violations.sort(key=_canonical_key)

    score = min(100, sum(v.points for v in violations))
    level = risk_level_for_score(score)
    if any(v.severity == "critical" for v in violations):
        level = "critical"

    actions = {v.action for v in violations}
    review = "review" in actions
    approved = not (
        "block" in actions
        or severity_rank(level) >= severity_rank(policy.block_threshold)
        or (review and policy.review_mode == "block")
    )
    decision: Decision
    if not approved:
        decision = "rejected"
    elif review:
        decision = "review"
    elif actions & {"flag", "redact", "neutralise"}:
        decision = "flagged"
    else:
        decision = "approved"

    return GovernorResult(
        # Validated against the full policy only when the request carried metadata;
        # without it only the content rules (personal data, secrets) could run.
        validated=inp.metadata is not None,
        approved=approved,
        decision=decision,
        risk_level=level,
        risk_score=score,
        violations=tuple(violations),
        policy_version=policy.version,
    )


def evaluate(inp: EvaluationInput, policy: Policy) -> GovernorResult:
    """Evaluate one phase's text and metadata against ``policy``."""
    return evaluate_with_rules(inp, policy, policy.rules)


# --- metadata validation -----------------------------------------------------------

# camelCase wire name -> GovernorMetadata field
_METADATA_FIELDS = {
    "actionType": "action_type",
    "senderId": "sender_id",
    "senderRole": "sender_role",
    "recipientCountry": "recipient_country",
    "recipientUserId": "recipient_user_id",
    "recipientEmail": "recipient_email",
    "department": "department",
}
_REQUIRED = ("actionType", "senderId")


def _country_error(value: str) -> str | None:
    if value.upper() in ISO_3166_ALPHA2:
        return None
    if value.upper() == "UK":
        return "Not an ISO 3166-1 alpha-2 code; the United Kingdom is GB."
    return "Must be an ISO 3166-1 alpha-2 country code, e.g. US or DE."


def validate_metadata(
    raw: Mapping[str, Any] | None,
) -> tuple[GovernorMetadata | None, dict[str, list[str]]]:
    """Parse the camelCase ``governorMetadata`` of the routed chat format.

    Returns ``(metadata, {})`` or ``(None, errors)`` with errors keyed by the
    camelCase field name. ``None`` input gives ``(None, {})``. Unknown keys are
    ignored, JSON null counts as absent, and ``recipientCountry`` is upper-cased.
    """
    if raw is None:
        return None, {}
    if not isinstance(raw, Mapping):
        return None, {"governorMetadata": ["Must be an object."]}

    errors: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    for wire, attr in _METADATA_FIELDS.items():
        value = raw.get(wire)
        if value is None:
            if wire in _REQUIRED:
                errors[wire] = ["This field is required."]
            continue
        if not isinstance(value, str):
            errors[wire] = ["Must be a string."]
        elif wire in _REQUIRED and not value.strip():
            errors[wire] = ["Must not be empty."]
        elif len(value) > _MAX_FIELD_LENGTH:
            errors[wire] = [f"Must be at most {_MAX_FIELD_LENGTH} characters."]
        else:
            values[attr] = value

    action_type = values.get("action_type")
    if action_type is not None and action_type not in ACTION_TYPES:
        errors["actionType"] = [f"Must be one of: {', '.join(ACTION_TYPES)}."]
    country = values.get("recipient_country")
    if country is not None:
        if message := _country_error(country):
            errors["recipientCountry"] = [message]
        else:
            values["recipient_country"] = country.upper()
    email = values.get("recipient_email")
    if email is not None and not is_valid_email(email):
        errors["recipientEmail"] = ["Must be a valid e-mail address."]

    if errors:
        return None, errors
    return GovernorMetadata(**values), {}
