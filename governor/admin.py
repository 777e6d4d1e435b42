import contextlib
import json
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from chatproject.overview import needs_review
from governor import services
from governor.detectors import KIND_PRIORITY, is_valid_email
from governor.models import AuditRecord, GovernorPolicy
from governor.rules import RULE_IDS, build_rules


def _rule_choices() -> list[tuple[str, str]]:
    return sorted(
        (rule.id, f"{rule.id} ({rule.severity}, {rule.action})") for rule in build_rules()
    )


class GovernorPolicyForm(forms.ModelForm):
    # Shown as the rules that run; stored as the ones unchecked (disabled_rules), so a rule
    # added later runs for this tenant until someone unchecks it.
    enabled_rules = forms.MultipleChoiceField(
        choices=_rule_choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Rules that run for this tenant; unchecked rules never fire.",
    )
    output_redact = forms.MultipleChoiceField(
        choices=[(kind, kind) for kind in KIND_PRIORITY],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Redacted from answers while they stream, before the client sees them.",
    )

    class Meta:
        model = GovernorPolicy
        fields = [
            "tenant",
            "enabled_rules",
            "block_threshold",
            "review_mode",
            "markup_action",
            "output_redact",
            "allowed_roles",
            "sanctioned_countries",
        ]
        widgets = {
            "allowed_roles": forms.Textarea(attrs={"rows": 6, "cols": 60}),
            "sanctioned_countries": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        disabled = set(self.instance.disabled_rules or ())
        self.fields["enabled_rules"].initial = sorted(RULE_IDS - disabled)

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if "enabled_rules" in cleaned:
            self.instance.disabled_rules = sorted(RULE_IDS - set(cleaned["enabled_rules"]))
        return cleaned

    def clean_output_redact(self) -> list[str]:
        return sorted(self.cleaned_data["output_redact"])


@admin.register(GovernorPolicy)
class GovernorPolicyAdmin(admin.ModelAdmin):
    form = GovernorPolicyForm
    list_display = ["tenant", "version", "block_threshold", "review_mode", "updated_at"]
    list_filter = ["block_threshold", "review_mode"]
    search_fields = ["tenant__name"]
    list_select_related = ["tenant"]
    readonly_fields = ["version", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        # A policy belongs to its tenant for good: audit records cite its versions.
        return [*self.readonly_fields, "tenant"] if obj is not None else self.readonly_fields

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting would restart the version at 1 and make audited versions ambiguous.
        return False


class AuditReviewForm(forms.ModelForm):
    """The only editable part of an audit record: its human review."""

    class Meta:
        model = AuditRecord
        fields = ["review_decision", "review_note"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        decision = cleaned.get("review_decision")
        if not decision and (cleaned.get("review_note") or self.instance.is_reviewed):
            raise ValidationError({"review_decision": "Choose a review decision."})
        return cleaned


class ReviewActionForm(forms.Form):
    review_decision = forms.ChoiceField(
        choices=AuditRecord.ReviewDecision.choices, label="Review decision"
    )
    review_note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}), required=False, label="Note"
    )


def _pretty_json(value: Any):
    if value is None:
        return "-"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


class NeedsReviewFilter(admin.SimpleListFilter):
    title = "review"
    parameter_name = "needs_review"

    def lookups(self, request, model_admin):
        return [("yes", "Needs review"), ("no", "Reviewed or not flagged")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(needs_review())
        if self.value() == "no":
            return queryset.exclude(needs_review())
        return queryset


@admin.register(AuditRecord)
class AuditRecordAdmin(admin.ModelAdmin):
    """Read-only: only the review can be recorded (by staff who may change records)."""

    form = AuditReviewForm
    # What staff scan for first; the ids are one click away, on the record.
    list_display = [
        "time",
        "tenant",
        "action_type",
        "risk",
        "decision_display",
        "violations_summary",
        "review",
    ]
    list_display_links = ["time"]
    list_filter = [
        NeedsReviewFilter,
        "tenant",
        "risk_level",
        "action_type",
        "decision",
        "approved",
        "review_decision",
        ("reviewed_at", admin.EmptyFieldListFilter),
        "created_at",
    ]
    search_fields = ["request_id", "sender_id"]
    search_help_text = "Request id, sender id, audit id or recipient e-mail (exact)."
    list_select_related = ["tenant"]
    actions = ["review_selected"]
    save_as = False
    fieldsets = [
        (
            "Request",
            {"fields": ["id", "tenant", "request_id", "model", "created_at", "completed_at"]},
        ),
        (
            "Metadata",
            {
                "fields": [
                    "action_type",
                    "sender_id",
                    "sender_role",
                    "department",
                    "recipient_country",
                    "recipient_user_id",
                    "recipient_email_masked",
                    "recipient_email_hash",
                ]
            },
        ),
        (
            "Decision",
            {
                "fields": [
                    "validated",
                    "approved",
                    "decision",
                    "risk_level",
                    "risk_score",
                    "policy_version",
                    "violations_display",
                ]
            },
        ),
        ("Input", {"fields": ["input_sha256", "excerpt"]}),
        ("Output", {"fields": ["output_findings_display"]}),
        (
            "Review",
            {"fields": ["review_decision", "review_note", "reviewed_by", "reviewed_at"]},
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        editable = set(AuditReviewForm.Meta.fields)
        return [
            name
            for _, options in self.fieldsets
            for name in options["fields"]
            if name not in editable
        ]

    @admin.display(description="time", ordering="created_at")
    def time(self, obj: AuditRecord):
        when = timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S")
        return format_html('<span class="nowrap">{}</span>', when)

    @admin.display(description="review", ordering="review_decision")
    def review(self, obj: AuditRecord) -> str:
        if obj.review_decision:
            return obj.review_decision
        return "needs review" if obj.decision == "review" else "—"

    @admin.display(description="risk", ordering="risk_score")
    def risk(self, obj: AuditRecord):
        return format_html(
            '<span class="nowrap"><span class="risk risk-{}">{}</span> {}</span>',
            obj.risk_level,
            obj.risk_level,
            obj.risk_score,
        )

    @admin.display(description="decision", ordering="decision")
    def decision_display(self, obj: AuditRecord):
        return format_html(
            '<span class="decision decision-{}">{}</span>', obj.decision, obj.decision
        )

    @admin.display(description="violations")
    def violations_summary(self, obj: AuditRecord) -> str:
        """The rules that fired, most points first (the record shows each in full)."""
        ranked = sorted(obj.violations or [], key=lambda v: -(v.get("points") or 0))
        return ", ".join(dict.fromkeys(v.get("rule", "?") for v in ranked)) or "—"

    @admin.display(description="violations")
    def violations_display(self, obj: AuditRecord):
        return _pretty_json(obj.violations)

    @admin.display(description="output findings")
    def output_findings_display(self, obj: AuditRecord):
        return _pretty_json(obj.output_findings)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        extra = Q()
        with contextlib.suppress(ValueError):
            extra |= Q(pk=uuid.UUID(term))
        if is_valid_email(term):
            extra |= Q(recipient_email_hash=services.recipient_email_hash(term))
        if extra:
            results |= queryset.filter(extra)
        return results, may_have_duplicates

    def save_model(self, request, obj: AuditRecord, form, change: bool) -> None:
        if change and form.has_changed():
            services.audit_record_review(
                record=obj,
                reviewer=request.user,
                decision=form.cleaned_data["review_decision"],
                note=form.cleaned_data["review_note"],
            )

    @admin.action(description="Review the selected audit records…", permissions=["change"])
    def review_selected(self, request, queryset):
        form = ReviewActionForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            records = list(queryset)
            for record in records:
                services.audit_record_review(
                    record=record,
                    reviewer=request.user,
                    decision=form.cleaned_data["review_decision"],
                    note=form.cleaned_data["review_note"],
                )
            self.message_user(
                request, f"Recorded the review of {len(records)} audit record(s).", messages.SUCCESS
            )
            return None
        return TemplateResponse(
            request,
            "admin/governor/auditrecord/review_selected.html",
            {
                **self.admin_site.each_context(request),
                "title": "Review audit records",
                "opts": self.model._meta,
                "queryset": queryset,
                "form": form,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "select_across": request.POST.get("select_across", "0"),
            },
        )
