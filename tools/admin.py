from django.contrib import admin

from tools.models import HttpTool


@admin.register(HttpTool)
class HttpToolAdmin(admin.ModelAdmin):
    """Tenants' webhook tools. The signing secret is shown so it can be handed to the
    tenant, who verifies each call's signature with it."""

    list_display = ["name", "tenant", "url", "timeout_seconds", "is_active", "updated_at"]
    list_filter = ["is_active", "tenant"]
    search_fields = ["name", "description", "url", "tenant__name"]
    list_select_related = ["tenant"]
    fields = [
        "tenant",
        "name",
        "description",
        "parameters",
        "url",
        "timeout_seconds",
        "is_active",
        "signing_secret",
        "created_at",
        "updated_at",
    ]
    readonly_fields = ["signing_secret", "created_at", "updated_at"]
