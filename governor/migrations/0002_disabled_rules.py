"""Policies store the rules a tenant turned off instead of the ones it had on, so that a
rule added to the code later runs for existing tenants too.

A policy's turned-off rules are the rules that existed before this migration minus the ones
it had enabled. The list is frozen here: it must not follow the code's rules as they grow.
"""

from django.db import migrations, models

import governor.models

# Every rule id before prompt_injection and markup_injection were added.
RULES_BEFORE = frozenset({
    "action_type_risk", "automated_decision_review", "gdpr_eu_recipient",
    "medical_health_identifier", "pii_card", "pii_email", "pii_iban", "pii_phone",
    "pii_ssn", "sanctioned_destination", "secret_credential", "sender_role_not_allowed",
})  # fmt: skip
# What the reverse migration enables for a policy that turned nothing off.
RULES_AFTER = RULES_BEFORE | {"prompt_injection", "markup_injection"}


def enabled_to_disabled(apps, schema_editor):
    GovernorPolicy = apps.get_model("governor", "GovernorPolicy")
    for policy in GovernorPolicy.objects.all().only("pk", "enabled_rules"):
        enabled = policy.enabled_rules
        enabled = set(enabled) if isinstance(enabled, list) else set(RULES_BEFORE)
        policy.disabled_rules = sorted(RULES_BEFORE - enabled)
        policy.save(update_fields=["disabled_rules"])


def disabled_to_enabled(apps, schema_editor):
    GovernorPolicy = apps.get_model("governor", "GovernorPolicy")
    for policy in GovernorPolicy.objects.all().only("pk", "disabled_rules"):
        policy.enabled_rules = sorted(RULES_AFTER - set(policy.disabled_rules or ()))
        policy.save(update_fields=["enabled_rules"])


class Migration(migrations.Migration):

    dependencies = [
        ("governor", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="governorpolicy",
            name="disabled_rules",
            field=models.JSONField(blank=True, default=governor.models.default_disabled_rules, help_text="Rule ids turned off for this tenant; every other rule runs."),
        ),
        migrations.RunPython(enabled_to_disabled, disabled_to_enabled),
        migrations.RemoveField(
            model_name="governorpolicy",
            name="enabled_rules",
        ),
    ]
