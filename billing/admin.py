from decimal import Decimal

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from billing.models import ApiKey, CreditHold, LedgerEntry, Plan, Tenant
from billing.services import api_key_create, api_key_revoke, credits_top_up
from billing.usage import usage_by_day, usage_chart
from chatproject.overview import tenant_summary


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "display_name",
        "requests_per_minute",
        "burst",
        "ws_messages_per_second",
        "ws_max_connections",
        "max_concurrent_generations",
    ]
    search_fields = ["name", "display_name"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = readonly_fields = (
        "prefix",
        "name",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are created from the API key page, which shows them once


class TopUpForm(forms.Form):
    amount = forms.DecimalField(
        max_digits=20, decimal_places=6, min_value=Decimal("0.000001"), help_text="Credits."
    )
    note = forms.CharField(max_length=200, required=False, help_text="Why, for the ledger.")


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "plan",
        "is_active",
        "credit_balance",
        "response_cache_enabled",
        "created_at",
        "links",
    ]
    list_filter = ["plan", "is_active", "response_cache_enabled"]
    list_select_related = ["plan"]
    search_fields = ["name"]
    readonly_fields = ["credit_balance", "created_at"]
    inlines = [ApiKeyInline]
    actions = ["top_up"]

    @admin.display(description="")
    def links(self, tenant: Tenant) -> str:
        ledger = reverse("admin:billing_ledgerentry_changelist") + f"?tenant__id__exact={tenant.pk}"
        usage = reverse("admin:billing_tenant_usage") + f"?tenant={tenant.pk}"
        return format_html('<a href="{}">ledger</a> · <a href="{}">usage</a>', ledger, usage)

    @admin.action(description="Top up credits of the selected tenants", permissions=["change"])
    def top_up(self, request, queryset):
        """An intermediate form (amount and note); each tenant gets a ledger entry."""
        form = TopUpForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            amount, note = form.cleaned_data["amount"], form.cleaned_data["note"]
            note = f"{note or 'admin top-up'} (by {request.user.get_username()})"[:255]
            with transaction.atomic():  # all the selected tenants, or none
                tenants = list(queryset)
                for tenant in tenants:
                    credits_top_up(tenant=tenant, amount=amount, note=note)
            self.message_user(request, f"Added {amount} credits to {len(tenants)} tenant(s).")
            return None  # back to the list
        return TemplateResponse(
            request,
            "admin/billing/tenant/top_up.html",
            {
                **self.admin_site.each_context(request),
                "title": "Top up credits",
                "form": form,
                "tenants": queryset,
                "opts": self.model._meta,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The tenant's balance, plan, usage and latest audit records above its form."""
        tenant = self.get_object(request, object_id)
        context = {**(extra_context or {})}
        if tenant is not None:
            context["summary"] = tenant_summary(tenant)
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self):
        usage = self.admin_site.admin_view(self.usage_view)
        return [path("usage/", usage, name="billing_tenant_usage"), *super().get_urls()]

    def usage_view(self, request):
        """Billed requests per tenant, model and day, from the settled credit holds: a
        stacked bar chart of tokens and the table behind it."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenant_id = _int_param(request.GET.get("tenant"))
        days = min(max(_int_param(request.GET.get("days")) or 30, 1), 366)
        rows = usage_by_day(tenant_id=tenant_id, days=days)
        return TemplateResponse(
            request,
            "admin/billing/tenant/usage.html",
            {
                **self.admin_site.each_context(request),
                "title": "Usage per tenant and model",
                "opts": self.model._meta,
                "rows": rows,
                "chart": usage_chart(rows, days=days),
                "tenants": Tenant.objects.only("id", "name"),
                "selected_tenant": tenant_id,
                "days": days,
                "day_choices": [7, 30, 90, 365],
                "totals": {
                    "requests": sum(r.requests for r in rows),
                    "prompt_tokens": sum(r.prompt_tokens for r in rows),
                    "completion_tokens": sum(r.completion_tokens for r in rows),
                    "credits": sum((r.credits for r in rows), Decimal(0)),
                },
            },
        )


def _int_param(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "name",
        "tenant",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "tenant__name"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["tenant", "name", "expires_at"]
        return [
            "tenant",
            "name",
            "prefix",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["tenant", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, raw_key = api_key_create(
            tenant=obj.tenant, name=obj.name, expires_at=obj.expires_at
        )
        obj.pk = api_key.pk
        obj.prefix = api_key.prefix
        # Kept on the request only, to render once; never in a message, cookie or session.
        request._new_api_key = raw_key

    def response_add(self, request, obj, post_url_continue=None):
        return TemplateResponse(
            request,
            "admin/billing/apikey_created.html",
            {
                **self.admin_site.each_context(request),
                "title": "API key created",
                "api_key": obj,
                "raw_key": request._new_api_key,
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by the billing services: viewable, never edited here."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "tenant", "kind", "amount", "balance_after", "reference", "note"]
    list_filter = ["kind", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["reference", "note", "tenant__name"]
    date_hierarchy = "created_at"


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "tenant",
        "model",
        "status",
        "amount",
        "charged",
        "tokens",
        "closed_at",
        "short_reference",
    ]
    list_filter = ["status", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["reference", "model", "tenant__name"]
    date_hierarchy = "created_at"

    @admin.display(description="tokens in / out")
    def tokens(self, hold: CreditHold) -> str:
        return f"{hold.prompt_tokens} / {hold.completion_tokens}"

    @admin.display(description="reference", ordering="reference")
    def short_reference(self, hold: CreditHold):
        """The request id, shortened to fit the list; in full on hover and on the record."""
        return format_html('<span title="{}">{}…</span>', hold.reference, hold.reference[:12])
