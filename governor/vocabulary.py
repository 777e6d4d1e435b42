"""The governor's vocabulary: risk levels (which double as severities), the actions a
violation asks for, RegPilot's action types with their risk and base points, the country
sets of the recipient rules, and the personal-data kinds."""

from __future__ import annotations

# Risk levels double as severities, lowest first.
RISK_LEVELS = ("low", "medium", "high", "critical")
# What a violation asks for, mildest first.
ACTIONS = ("allow", "flag", "redact", "neutralise", "review", "block")

# RegPilot's action types with the risk it documents for each.
ACTION_TYPE_RISK: dict[str, str] = {
    "customer_support": "low",
    "legal_advice": "medium",
    "medical_advice": "medium",
    "hr_message": "medium",
    "suspension": "high",
    "refund_denial": "high",
    "policy_warning": "medium",
    "other": "low",
}
ACTION_TYPES = tuple(ACTION_TYPE_RISK)
# Base points per action-type risk: alone, each type lands in its own risk band.
BASE_POINTS = {"low": 0, "medium": 25, "high": 50}

_EU_COUNTRIES = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})  # fmt: skip
EU_EEA_COUNTRIES = _EU_COUNTRIES | {"IS", "LI", "NO"}
# Comprehensive embargoes; the default sanctioned destinations.
DEFAULT_SANCTIONED_COUNTRIES = frozenset({"CU", "IR", "KP", "SY"})
# Broad but sectoral sanctions; add them to a policy's set where the tenant must.
EXTENDED_SANCTIONED_COUNTRIES = frozenset({"RU", "BY"})

PERSONAL_DATA_KINDS = frozenset({"card", "ssn", "iban", "email", "phone", "health_id"})


def severity_rank(level: str) -> int:
    """Position of a risk level / severity in ``RISK_LEVELS``."""
    return RISK_LEVELS.index(level)
