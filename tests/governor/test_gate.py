import hashlib

import pytest

from chatproject.errors import ApiError, ErrorCode
from governor import gate
from governor.evaluation import GovernorMetadata
from governor.models import AuditRecord, GovernorPolicy
from governor.policies import policy_cache_invalidate, policy_for_tenant
from governor.services import policy_update, recipient_email_hash
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
SECRET = "sk_live_a1B2c3D4e5F6g7H8i9J0kL"


def md(action_type="customer_support", **kwargs) -> GovernorMetadata:
    return GovernorMetadata(action_type=action_type, sender_id="user_12345", **kwargs)


def check(tenant, text, metadata=None, *, request_id="req-1") -> gate.GateDecision:
    return gate.governor_assess_input(
        tenant=tenant, request_id=request_id, text=text, metadata=metadata, model_name="demo/echo"
    ).record()


def rejection(tenant, text, metadata=None) -> ApiError:
    with pytest.raises(ApiError) as info:
        check(tenant, text, metadata)
    assert info.value.code == ErrorCode.GOVERNOR_REJECTED
    assert info.value.status == 403
    return info.value


def violated_rules(result: dict) -> set[str]:
    return {v["rule"] for v in result["violations"]}


# --- metadata -------------------------------------------------------------------------


def test_parse_metadata_absent_is_none():
    assert gate.governor_parse_metadata(None) is None


def test_parse_metadata_as_documented():
    metadata = gate.governor_parse_metadata(
        {
            "actionType": "legal_advice",
            "recipientCountry": "us",
            "senderId": "user_12345",
            "senderRole": "customer_support",
            "department": "legal",
        }
    )
    assert metadata == GovernorMetadata(
        action_type="legal_advice",
        sender_id="user_12345",
        sender_role="customer_support",
        recipient_country="US",
        department="legal",
    )


def test_parse_metadata_errors_name_each_field():
    with pytest.raises(ApiError) as info:
        gate.governor_parse_metadata({"actionType": "gossip", "recipientCountry": "XX"})
    assert info.value.code == ErrorCode.VALIDATION_ERROR
    assert set(info.value.details) == {
        "governorMetadata.actionType",
        "governorMetadata.senderId",
        "governorMetadata.recipientCountry",
    }


def test_parse_metadata_not_an_object():
    with pytest.raises(ApiError) as info:
        gate.governor_parse_metadata(["legal_advice"])
    assert set(info.value.details) == {"governorMetadata"}


# --- input check: approved ----------------------------------------------------------------


def test_approved_request_is_audited_without_raw_personal_data(tenant):
    text = f"Please charge card {CARD} and send the receipt to {EMAIL}."
    metadata = md(recipient_email="Jane.Doe@Example.com", recipient_country="US")

    decision = check(tenant, text, metadata, request_id="req-approved")

    assert decision.result["approved"] is True
    assert decision.result["decision"] == "flagged"
    assert {"pii_card", "pii_email"} <= violated_rules(decision.result)
    record = AuditRecord.objects.get(pk=decision.audit_id)
    assert record.tenant == tenant
    assert record.request_id == "req-approved"
    assert record.model == "demo/echo"
    assert record.approved is True
    assert record.decision == "flagged"
    assert record.risk_score == decision.result["risk_score"]
    assert record.risk_level == decision.result["risk_level"]
    assert record.violations == decision.result["violations"]
    assert record.policy_version == 1
    assert record.input_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert "[REDACTED:card]" in record.excerpt
    assert "[REDACTED:email]" in record.excerpt
    assert record.sender_id == "user_12345"
    assert record.action_type == "customer_support"
    assert record.recipient_country == "US"
    assert record.recipient_email_masked == "J***@Example.com"
    assert record.recipient_email_hash == recipient_email_hash("jane.doe@example.com")
    assert record.output_findings is None
    assert record.completed_at is None
    # No column of the row holds the card number or either address in the clear.
    stored = " ".join(
        str(v) for v in AuditRecord.objects.filter(pk=record.pk).values().get().values()
    )
    for raw in (CARD, CARD.replace(" ", ""), EMAIL, "Jane.Doe@Example.com", "jane.doe"):
        assert raw.lower() not in stored.lower()


def test_excerpt_is_at_most_500_characters(tenant):
    decision = check(tenant, "word " * 400 + CARD)
    record = AuditRecord.objects.get(pk=decision.audit_id)
    assert len(record.excerpt) <= 500
    assert record.excerpt.endswith("…")


def test_excerpt_survives_characters_a_database_refuses(tenant):
    decision = check(tenant, "nul \x00 and a lone surrogate \ud800 here")
    record = AuditRecord.objects.get(pk=decision.audit_id)
    assert "\x00" not in record.excerpt


def test_secrets_in_metadata_fields_are_redacted_in_the_record(tenant):
    metadata = GovernorMetadata(
        action_type="customer_support",
        sender_id=SECRET,
        sender_role=f"agent {EMAIL}",
        recipient_user_id=f"user {SECRET}",
        department=f"support {SECRET}",
    )
    record = AuditRecord.objects.get(pk=check(tenant, "hello", metadata).audit_id)
    stored = " ".join(
        str(v) for v in AuditRecord.objects.filter(pk=record.pk).values().get().values()
    )
    assert SECRET not in stored and EMAIL not in stored
    assert record.sender_id.startswith("[REDACTED:")
    assert record.department.startswith("support [REDACTED:")


def test_request_without_metadata_is_checked_but_not_validated(tenant):
    decision = check(tenant, f"my card is {CARD}")
    assert decision.result["validated"] is False
    assert decision.result["approved"] is True
    assert violated_rules(decision.result) == {"pii_card"}
    record = AuditRecord.objects.get(pk=decision.audit_id)
    assert record.validated is False
    assert record.action_type == ""
    assert record.sender_id == ""


def test_raw_metadata_is_parsed(tenant):
    decision = check(tenant, "hello", {"actionType": "legal_advice", "senderId": "u1"})
    assert decision.result["validated"] is True
    assert violated_rules(decision.result) == {"action_type_risk"}


def test_every_request_writes_exactly_one_record(tenant):
    check(tenant, "hello", request_id="a")
    check(tenant, "hello again", request_id="b")
    assert AuditRecord.objects.filter(tenant=tenant).count() == 2


def test_first_use_creates_the_default_policy(tenant):
    assert not GovernorPolicy.objects.filter(tenant=tenant).exists()
    check(tenant, "hello")
    policy = GovernorPolicy.objects.get(tenant=tenant)
    assert policy.version == 1
    assert policy.block_threshold == "critical"
    assert policy.review_mode == "review"


def test_a_checked_request_costs_one_query_once_the_policy_is_cached(
    tenant, django_assert_num_queries
):
    check(tenant, "warm up")
    with django_assert_num_queries(1):  # the INSERT of the audit record
        check(tenant, "hello")


# --- input check: rejected ---------------------------------------------------------------


def test_secret_in_text_is_rejected_and_audited(tenant):
    error = rejection(tenant, f"my key is {SECRET}", md())

    assert error.details["approved"] is False
    assert error.details["decision"] == "rejected"
    assert error.details["risk_level"] == "critical"
    assert "secret_credential" in violated_rules(error.details)
    assert "secret_credential" in error.message
    record = AuditRecord.objects.get(pk=error.details["audit_id"])
    assert record.decision == "rejected"
    assert record.approved is False
    assert SECRET not in record.excerpt
    assert "[REDACTED:secret]" in record.excerpt


def test_sanctioned_country_is_rejected_and_audited(tenant):
    error = rejection(tenant, "Your order has shipped.", md(recipient_country="IR"))
    assert violated_rules(error.details) == {"sanctioned_destination"}
    record = AuditRecord.objects.get(pk=error.details["audit_id"])
    assert record.decision == "rejected"
    assert record.recipient_country == "IR"


def test_rejection_carries_the_governor_headers(tenant):
    error = rejection(tenant, f"key {SECRET}")
    assert error.headers["x-governor-approved"] == "false"
    assert error.headers["x-governor-audit-id"] == error.details["audit_id"]


def test_rejection_details_are_the_result_with_the_audit_id(tenant):
    error = rejection(tenant, f"key {SECRET}")
    assert set(error.details) == {
        "validated",
        "approved",
        "decision",
        "risk_level",
        "risk_score",
        "violations",
        "policy_version",
        "audit_id",
    }


# --- policies -----------------------------------------------------------------------------


def test_every_policy_save_increments_the_version(tenant):
    policy = GovernorPolicy.objects.create(tenant=tenant)
    assert policy.version == 1
    policy.block_threshold = "high"
    policy.save()
    assert policy.version == 2
    policy.save(update_fields=["block_threshold"])
    assert policy.version == 3
    policy.refresh_from_db()
    assert policy.version == 3


def test_policy_change_applies_at_once_and_its_version_is_recorded(tenant):
    assert check(tenant, "hello").result["policy_version"] == 1
    policy_update(tenant=tenant, block_threshold="high")
    decision = check(tenant, "hello")
    assert decision.result["policy_version"] == 2
    assert AuditRecord.objects.get(pk=decision.audit_id).policy_version == 2


def test_disabled_rule_no_longer_fires(tenant):
    assert "pii_email" in violated_rules(check(tenant, f"mail {EMAIL}").result)
    policy_update(tenant=tenant, disabled_rules=["pii_email"])
    decision = check(tenant, f"mail {EMAIL}")
    assert "pii_email" not in violated_rules(decision.result)
    assert decision.result["decision"] == "approved"


def test_disabling_the_secret_rule_lets_a_secret_pass(tenant):
    rejection(tenant, f"key {SECRET}")
    policy_update(tenant=tenant, disabled_rules=["secret_credential"])
    assert check(tenant, f"key {SECRET}").result["approved"] is True


def test_allowed_roles_block_legal_advice_from_another_role(tenant):
    policy_update(tenant=tenant, allowed_roles={"legal_advice": ["lawyer"]})
    question = "Can I sue my employer for discrimination?"

    error = rejection(tenant, question, md("legal_advice", sender_role="customer_support"))
    assert "sender_role_not_allowed" in violated_rules(error.details)
    assert check(tenant, question, md("legal_advice", sender_role="Lawyer")).result["approved"]
    # Other action types stay open to any role.
    assert check(tenant, question, md("customer_support", sender_role="intern")).result["approved"]


def test_tenant_sanctioned_countries_extend_the_defaults(tenant):
    assert check(tenant, "hello", md(recipient_country="RU")).result["approved"]
    policy_update(tenant=tenant, sanctioned_countries=["CU", "IR", "KP", "SY", "RU"])
    rejection(tenant, "hello", md(recipient_country="RU"))


def test_review_mode_block_rejects_review_actions(tenant):
    metadata = md("suspension")
    assert check(tenant, "Your account is suspended.", metadata).result["decision"] == "review"
    policy_update(tenant=tenant, review_mode="block")
    rejection(tenant, "Your account is suspended.", metadata)


def test_policies_are_per_tenant(tenant):
    other = make_tenant(name="other")
    policy_update(tenant=tenant, sanctioned_countries=["US"])
    rejection(tenant, "hello", md(recipient_country="US"))
    assert check(other, "hello", md(recipient_country="US")).result["approved"]


def test_policy_is_cached_for_a_few_seconds(tenant, django_assert_num_queries):
    first = policy_for_tenant(tenant=tenant)
    with django_assert_num_queries(0):
        assert policy_for_tenant(tenant=tenant) is first


def test_policy_cache_expires(tenant, monkeypatch):
    first = policy_for_tenant(tenant=tenant)
    # Another process changed the policy: this one sees it once its entry expires.
    GovernorPolicy.objects.filter(tenant=tenant).update(block_threshold="low", version=9)
    assert policy_for_tenant(tenant=tenant) is first
    monkeypatch.setattr("governor.policies.POLICY_CACHE_SECONDS", 0.0)
    from governor.policies import policy_cache_invalidate

    policy_cache_invalidate(tenant.pk)
    assert policy_for_tenant(tenant=tenant).version == 9


def test_to_policy_maps_every_field(tenant):
    stored = GovernorPolicy.objects.create(
        tenant=tenant,
        disabled_rules=["pii_card"],
        block_threshold="high",
        review_mode="block",
        allowed_roles={"legal_advice": ["lawyer"]},
        sanctioned_countries=["ru"],
        markup_action="block",
        output_redact=["email"],
    )
    policy = stored.to_policy()
    assert policy.version == 1
    assert policy.disabled_rules == frozenset({"pii_card"})
    assert (policy.markup_action, policy.output_redact) == ("block", frozenset({"email"}))
    assert policy.block_threshold == "high"
    assert policy.review_mode == "block"
    assert dict(policy.allowed_roles) == {"legal_advice": ("lawyer",)}
    assert policy.sanctioned_countries == frozenset({"RU"})


def test_a_stored_policy_naming_a_rule_that_no_longer_exists_still_works(tenant):
    GovernorPolicy.objects.create(tenant=tenant)
    GovernorPolicy.objects.filter(tenant=tenant).update(
        disabled_rules=["pii_card", "retired_rule"],
        allowed_roles={"retired_type": ["x"]},
    )
    rejection(tenant, f"key {SECRET}")
    assert check(tenant, f"card {CARD}").result["violations"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("disabled_rules", ["no_such_rule"]),
        ("disabled_rules", "pii_card"),
        ("output_redact", ["passport"]),
        ("markup_action", "erase"),
        ("allowed_roles", {"gossip": ["x"]}),
        ("allowed_roles", {"legal_advice": "lawyer"}),
        ("allowed_roles", ["lawyer"]),
        ("sanctioned_countries", ["XX"]),
        ("sanctioned_countries", "IR"),
    ],
)
def test_policy_update_refuses_bad_values(tenant, field, value):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        policy_update(tenant=tenant, **{field: value})
    assert field in info.value.message_dict


# --- output check ---------------------------------------------------------------------------


def test_output_check_records_findings_on_the_same_record(tenant):
    decision = check(tenant, "What is the support address?", md(recipient_country="DE"))

    gate.governor_check_output(decision=decision, text=f"Write to {EMAIL} or call +49 30 1234567.")

    record = AuditRecord.objects.get(pk=decision.audit_id)
    assert AuditRecord.objects.count() == 1
    assert record.completed_at is not None
    findings = record.output_findings
    assert {"pii_email", "pii_phone", "gdpr_eu_recipient"} <= violated_rules(findings)
    assert findings["decision"] == "flagged"
    assert findings["policy_version"] == 1
    assert all(
        v["explanation"].startswith("The output") or "GDPR" in v["explanation"]
        for v in findings["violations"]
    )
    # The input phase is as it was.
    assert record.decision == "approved"


def test_output_check_of_a_clean_answer_records_no_findings(tenant):
    decision = check(tenant, "hello")
    gate.governor_check_output(decision=decision, text="Hello! How can I help?")
    record = AuditRecord.objects.get(pk=decision.audit_id)
    assert record.output_findings["violations"] == []
    assert record.completed_at is not None


def test_output_check_recovers_metadata_and_policy_from_the_record(tenant):
    decision = check(tenant, "hello", md("medical_advice"))
    bare = gate.GateDecision(result=decision.result, audit_id=decision.audit_id)
    gate.governor_check_output(decision=bare, text="Diagnosis code E11.9 fits.")
    findings = AuditRecord.objects.get(pk=decision.audit_id).output_findings
    assert "medical_health_identifier" in violated_rules(findings)


def test_output_check_without_audit_id_does_nothing(tenant):
    gate.governor_check_output(decision=gate.GateDecision(result=None), text=f"mail {EMAIL}")
    assert not AuditRecord.objects.exists()


# --- headers ------------------------------------------------------------------------------


def test_headers_of_an_approved_request(tenant):
    decision = check(tenant, "Can I sue my employer?", md("legal_advice"))
    assert decision.headers() == {
        "x-governor-validated": "true",
        "x-governor-approved": "true",
        "x-governor-risk-level": "medium",
        "x-governor-risk-score": "25",
        "x-governor-violations": "1",
        "x-governor-audit-id": decision.audit_id,
    }


def test_headers_without_metadata_say_not_validated(tenant):
    headers = check(tenant, "hello").headers()
    assert headers["x-governor-validated"] == "false"
    assert headers["x-governor-approved"] == "true"
    assert headers["x-governor-violations"] == "0"


def test_headers_without_a_result():
    assert gate.GateDecision(result=None).headers() == {"x-governor-validated": "false"}


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_requests_share_one_policy():
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    tenant = make_tenant(name="fresh")

    def one(i: int) -> str:
        try:
            return check(tenant, f"hello {i}", request_id=f"req-{i}").audit_id
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        audit_ids = list(pool.map(one, range(16)))

    assert len(set(audit_ids)) == 16
    assert GovernorPolicy.objects.filter(tenant=tenant).count() == 1
    assert AuditRecord.objects.filter(tenant=tenant).count() == 16


def test_assessing_with_the_cached_policy_only_touches_no_database(
    tenant, django_assert_num_queries
):
    arguments = {
        "tenant": tenant,
        "request_id": "req-cached",
        "text": "hello",
        "metadata": None,
        "model_name": "demo/balanced",
    }
    policy_cache_invalidate(tenant.pk)
    with django_assert_num_queries(0):
        assert gate.governor_assess_input(**arguments, cached_policy_only=True) is None
    policy_for_tenant(tenant=tenant)  # now cached
    with django_assert_num_queries(0):
        check = gate.governor_assess_input(**arguments, cached_policy_only=True)
    assert not AuditRecord.objects.filter(request_id="req-cached").exists()  # not yet
    decision = check.record()
    assert AuditRecord.objects.get(pk=decision.audit_id).request_id == "req-cached"
