import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governor.detectors import scan
from governor.evaluation import (
    ACTION_TYPES,
    ISO_3166_ALPHA2,
    RISK_LEVELS,
    EvaluationInput,
    GovernorMetadata,
    Policy,
    evaluate,
    evaluate_with_rules,
    risk_level_for_score,
    validate_metadata,
)
from governor.rules import RULE_IDS, SecretRule, build_rules

# Texts that each make at least one rule fire.
FRAGMENTS = [
    "card 4111 1111 1111 1111",
    "ssn 123-45-6789",
    "iban DE89 3704 0044 0532 0130 00",
    "mail jane.doe@example.com",
    "call (555) 123-4567",
    "call +44 20 7946 0958",
    "key sk_live_a1B2c3D4e5F6g7H8i9J0kL",
    "AKIAZ7K3M2Q9W4XR1TBV",
    "-----BEGIN RSA PRIVATE KEY-----",
    "MRN: 00123456",
    "NHS number 943 476 5919",
    "Diagnosis: E11.9",
    "Your employment is terminated.",
]
ROLE_POLICIES = [{}, {"legal_advice": ["lawyer"]}, {"medical_advice": ["doctor", "nurse"]}]

texts = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(FRAGMENTS)), max_size=6).map(
    " ".join
)


def optional(strategy):
    return st.none() | strategy


metadata = st.none() | st.builds(
    GovernorMetadata,
    action_type=st.sampled_from(ACTION_TYPES),
    sender_id=st.text(min_size=1, max_size=12),
    sender_role=optional(st.sampled_from(["lawyer", "doctor", "customer_support", "hr"])),
    recipient_country=optional(st.sampled_from(["US", "DE", "FR", "NO", "GB", "KP", "IR", "RU"])),
    recipient_user_id=optional(st.text(max_size=8)),
    recipient_email=optional(st.just("someone@example.com")),
    department=optional(st.sampled_from(["legal", "hr", "support"])),
)
inputs = st.builds(
    EvaluationInput, text=texts, metadata=metadata, phase=st.sampled_from(["input", "output"])
)
policies = st.builds(
    Policy,
    version=st.integers(min_value=1, max_value=1000),
    disabled_rules=st.frozensets(st.sampled_from(sorted(RULE_IDS))),
    markup_action=st.sampled_from(["neutralise", "block", "flag"]),
    block_threshold=st.sampled_from(RISK_LEVELS),
    review_mode=st.sampled_from(["block", "review"]),
    allowed_roles=st.sampled_from(ROLE_POLICIES),
    sanctioned_countries=st.sampled_from([frozenset({"KP", "IR"}), frozenset({"KP", "RU"})]),
)


# --- properties ------------------------------------------------------------------


@given(inputs, policies)
def test_score_is_within_bounds_and_traceable_to_violations(inp, policy):
    result = evaluate(inp, policy)
    assert 0 <= result.risk_score <= 100
    assert result.risk_score == min(100, sum(v.points for v in result.violations))
    assert result.risk_level in RISK_LEVELS
    assert result.policy_version == policy.version


@given(inputs, policies)
def test_level_follows_score_unless_a_violation_is_critical(inp, policy):
    result = evaluate(inp, policy)
    if any(v.severity == "critical" for v in result.violations):
        assert result.risk_level == "critical"
    else:
        assert result.risk_level == risk_level_for_score(result.risk_score)


@given(inputs, policies)
def test_decision_agrees_with_approval(inp, policy):
    result = evaluate(inp, policy)
    assert result.approved == (result.decision != "rejected")
    if any(v.action == "block" for v in result.violations):
        assert not result.approved


@settings(max_examples=150)
@given(inputs, policies, st.sampled_from(FRAGMENTS))
def test_adding_a_triggering_fragment_never_lowers_the_score(inp, policy, fragment):
    before = evaluate(inp, policy)
    longer = EvaluationInput(f"{inp.text}\n{fragment}", inp.metadata, inp.phase)
    assert evaluate(longer, policy).risk_score >= before.risk_score


@given(inputs, policies, st.randoms(use_true_random=False))
def test_rule_order_does_not_change_the_result(inp, policy, rnd):
    rules = list(
        build_rules(
            allowed_roles=policy.allowed_roles, sanctioned_countries=policy.sanctioned_countries
        )
    )
    rnd.shuffle(rules)
    assert evaluate_with_rules(inp, policy, rules) == evaluate(inp, policy)


@given(inputs, policies)
def test_same_input_gives_the_same_result(inp, policy):
    first = evaluate(inp, policy)
    scan.cache_clear()  # recompute the findings rather than reuse them
    assert evaluate(inp, policy) == first
    assert first.to_dict() == evaluate(inp, policy).to_dict()


@given(inputs, policies)
def test_result_dict_is_json_ready(inp, policy):
    data = evaluate(inp, policy).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert all(v["span"] is None or len(v["span"]) == 2 for v in data["violations"])


# --- examples --------------------------------------------------------------------


def meta(action_type="customer_support", **kwargs) -> GovernorMetadata:
    return GovernorMetadata(action_type=action_type, sender_id="user_12345", **kwargs)


def test_documented_example_is_approved_at_medium_risk():
    inp = EvaluationInput(
        "Can I sue my employer for discrimination?",
        meta("legal_advice", recipient_country="US", sender_role="customer_support"),
    )
    result = evaluate(inp, Policy.default())
    assert (result.validated, result.approved, result.decision) == (True, True, "approved")
    assert (result.risk_level, result.risk_score) == ("medium", 25)
    assert [v.rule for v in result.violations] == ["action_type_risk"]


def test_clean_customer_support_message_is_approved_at_zero():
    result = evaluate(EvaluationInput("Thanks, your order shipped.", meta()), Policy.default())
    assert (result.decision, result.risk_level, result.risk_score) == ("approved", "low", 0)
    assert result.violations == ()


def test_personal_data_is_flagged_but_approved():
    result = evaluate(EvaluationInput("Reach me at jane@example.com", meta()), Policy.default())
    assert (result.approved, result.decision, result.risk_score) == (True, "flagged", 5)


def test_a_secret_is_rejected_as_critical():
    inp = EvaluationInput("my key is sk_live_a1B2c3D4e5F6g7H8i9J0kL", meta(), phase="output")
    result = evaluate(inp, Policy.default())
    assert (result.approved, result.decision, result.risk_level) == (False, "rejected", "critical")


def test_sanctioned_recipient_is_rejected():
    result = evaluate(EvaluationInput("hello", meta(recipient_country="KP")), Policy.default())
    assert not result.approved
    assert result.risk_level == "critical"


@pytest.mark.parametrize(
    ("review_mode", "approved", "decision"),
    [("review", True, "review"), ("block", False, "rejected")],
)
def test_review_mode_decides_what_a_review_action_does(review_mode, approved, decision):
    inp = EvaluationInput("Your employment is terminated.", meta("hr_message"))
    result = evaluate(inp, Policy(review_mode=review_mode))
    assert (result.approved, result.decision) == (approved, decision)


@pytest.mark.parametrize(
    ("threshold", "approved"), [("critical", True), ("high", False), ("medium", False)]
)
def test_block_threshold_refuses_from_that_level(threshold, approved):
    # refund_denial alone: 50 points, high.
    result = evaluate(
        EvaluationInput("No refund.", meta("refund_denial")), Policy(block_threshold=threshold)
    )
    assert result.risk_level == "high"
    assert result.approved is approved


def test_role_restriction_blocks_legal_advice_from_support():
    policy = Policy(allowed_roles={"legal_advice": ["lawyer"]})
    inp = EvaluationInput("You can sue.", meta("legal_advice", sender_role="customer_support"))
    result = evaluate(inp, policy)
    assert not result.approved
    assert "sender_role_not_allowed" in {v.rule for v in result.violations}


def test_disabled_rules_do_not_fire():
    policy = Policy(disabled_rules=frozenset({"pii_card"}))
    result = evaluate(EvaluationInput("card 4111 1111 1111 1111", meta()), policy)
    assert result.violations == ()


def test_score_is_capped_at_100():
    text = (
        "4111 1111 1111 1111 / 123-45-6789 / DE89 3704 0044 0532 0130 00 / Your role is terminated"
    )
    inp = EvaluationInput(text, meta("hr_message", recipient_country="DE"))
    result = evaluate(inp, Policy.default())
    assert sum(v.points for v in result.violations) > 100
    assert result.risk_score == 100


def test_without_metadata_only_content_rules_run_and_result_is_not_validated():
    result = evaluate(EvaluationInput("call (555) 123-4567", None), Policy.default())
    assert result.validated is False
    assert [v.rule for v in result.violations] == ["pii_phone"]


def test_violations_are_sorted_most_severe_first():
    inp = EvaluationInput("a@b.io 4111111111111111", meta("suspension"))
    severities = [v.severity for v in evaluate(inp, Policy.default()).violations]
    ranks = [RISK_LEVELS.index(s) for s in severities]
    assert ranks == sorted(ranks, reverse=True)


def test_duplicate_rule_ids_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_with_rules(
            EvaluationInput("x", None), Policy.default(), [SecretRule(), SecretRule()]
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_threshold": "severe"},
        {"review_mode": "maybe"},
        {"disabled_rules": frozenset({"no_such_rule"})},
        {"markup_action": "erase"},
        {"output_redact": frozenset({"passport"})},
        {"allowed_roles": {"tax_advice": ["accountant"]}},
    ],
)
def test_policy_rejects_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        Policy(**kwargs)


def test_policy_copies_its_roles_so_it_stays_frozen():
    roles = {"legal_advice": ["lawyer"]}
    policy = Policy(allowed_roles=roles)
    roles["legal_advice"].append("customer_support")
    assert policy.allowed_roles == {"legal_advice": ("lawyer",)}
    assert hash(policy) == hash(Policy(allowed_roles={"legal_advice": ["lawyer"]}))


def test_policy_default_settings():
    policy = Policy.default()
    assert (policy.block_threshold, policy.review_mode, policy.disabled_rules) == (
        "critical",
        "review",
        frozenset(),
    )
    assert policy.enabled_rules == RULE_IDS
    assert (policy.markup_action, policy.output_redact) == ("neutralise", frozenset())
    assert {"KP", "IR", "SY", "CU"} <= policy.sanctioned_countries


def test_action_types_are_the_documented_eight():
    assert set(ACTION_TYPES) == {
        "customer_support", "legal_advice", "medical_advice", "hr_message",
        "suspension", "refund_denial", "policy_warning", "other",
    }  # fmt: skip


# --- metadata validation ---------------------------------------------------------

EXAMPLE_METADATA = {
    "actionType": "legal_advice",
    "recipientCountry": "US",
    "senderId": "user_12345",
    "senderRole": "customer_support",
    "department": "legal",
}


def test_validate_metadata_accepts_the_documented_example():
    metadata, errors = validate_metadata(EXAMPLE_METADATA)
    assert errors == {}
    assert metadata == GovernorMetadata(
        action_type="legal_advice",
        sender_id="user_12345",
        sender_role="customer_support",
        recipient_country="US",
        department="legal",
    )


def test_validate_metadata_of_none_is_nothing():
    assert validate_metadata(None) == (None, {})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"actionType": None}, "actionType"),
        ({"actionType": "tax_advice"}, "actionType"),
        ({"actionType": 3}, "actionType"),
        ({"senderId": None}, "senderId"),
        ({"senderId": ""}, "senderId"),
        ({"senderId": "   "}, "senderId"),
        ({"senderId": 12345}, "senderId"),
        ({"senderId": "x" * 256}, "senderId"),
        ({"senderRole": ["admin"]}, "senderRole"),
        ({"recipientCountry": "XX"}, "recipientCountry"),
        ({"recipientCountry": "USA"}, "recipientCountry"),
        ({"recipientCountry": "UK"}, "recipientCountry"),
        ({"recipientEmail": "not-an-email"}, "recipientEmail"),
        ({"recipientUserId": 42}, "recipientUserId"),
        ({"department": {"name": "legal"}}, "department"),
    ],
)
def test_validate_metadata_reports_the_bad_field(changes, field):
    raw = {**EXAMPLE_METADATA, **changes}
    if changes.get(field, "") is None:
        del raw[field]
    metadata, errors = validate_metadata(raw)
    assert metadata is None
    assert list(errors) == [field]
    assert errors[field]


def test_validate_metadata_reports_every_bad_field_at_once():
    _, errors = validate_metadata({"recipientCountry": "ZZ"})
    assert set(errors) == {"actionType", "senderId", "recipientCountry"}


def test_validate_metadata_suggests_gb_for_uk():
    _, errors = validate_metadata({**EXAMPLE_METADATA, "recipientCountry": "UK"})
    assert "GB" in errors["recipientCountry"][0]


def test_validate_metadata_normalises_country_case_and_ignores_unknown_keys():
    metadata, errors = validate_metadata(
        {**EXAMPLE_METADATA, "recipientCountry": "de", "recipientEmail": "a@b.de", "extra": 1}
    )
    assert errors == {}
    assert metadata.recipient_country == "DE"
    assert metadata.recipient_email == "a@b.de"


def test_validate_metadata_treats_null_optionals_as_absent():
    metadata, errors = validate_metadata({**EXAMPLE_METADATA, "senderRole": None})
    assert errors == {}
    assert metadata.sender_role is None


def test_validate_metadata_rejects_a_non_object():
    assert validate_metadata(["legal_advice"]) == (
        None,
        {"governorMetadata": ["Must be an object."]},
    )


def test_iso_list_holds_the_249_assigned_codes():
    assert len(ISO_3166_ALPHA2) == 249
    assert {"US", "DE", "GB", "KP", "AX", "SS", "XK"} - ISO_3166_ALPHA2 == {"XK"}
