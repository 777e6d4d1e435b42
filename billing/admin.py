from django.contrib import admin
from django.template.response import TemplateResponse

from billing.models import ApiKey, LedgerEntry, Plan, Tenant
from billing.services import api_key_create, api_key_revoke


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "display_name",
        "requests_per_minute",
        "burst",
        "ws_messages_per_second",
        "ws_max_connections",
    ]
    search_fields = ["name", "display_name"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ["prefix", "name", "created_at", "last_used_at", "expires_at", "revoked_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are created from the API key page, which shows them once


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "plan", "is_active", "credit_balance", "created_at"]
    list_filter = ["plan", "is_active"]
    search_fields = ["name"]
    readonly_fields = ["credit_balance", "created_at"]
    inlines = [ApiKeyInline]


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


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "kind", "amount", "balance_after", "reference", "note"]
    list_filter = ["kind", "tenant"]
    search_fields = ["reference", "note", "tenant__name"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
