from django.contrib import admin
from django.utils.text import Truncator

from chats import catalog
from chats.models import Chat, EndUser, LLMModel, Message, ModelFallback


class ReadOnlyAdminMixin:
    """Conversation history is evidence: staff read it, nobody edits it here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(EndUser)
class EndUserAdmin(admin.ModelAdmin):
    list_display = ["external_id", "tenant", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["external_id", "tenant__name"]
    readonly_fields = ["tenant", "external_id", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


class MessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "created_at",
        "role",
        "status",
        "model",
        "content",
        "prompt_tokens",
        "completion_tokens",
    )
    ordering = ["created_at", "id"]


@admin.register(Chat)
class ChatAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "title", "end_user", "tenant", "id"]
    list_filter = ["tenant", "created_at"]
    search_fields = ["id", "title", "end_user__external_id", "tenant__name"]
    list_select_related = ["end_user", "tenant"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "chat", "role", "status", "model", "excerpt"]
    list_filter = ["role", "status", "model", "chat__tenant"]
    search_fields = ["content", "chat__id"]
    list_select_related = ["chat"]

    @admin.display(description="content")
    def excerpt(self, message: Message) -> str:
        return Truncator(message.content).chars(90)


class FallbackInline(admin.TabularInline):
    """The models tried, in order, when this one fails before its first token."""

    model = ModelFallback
    fk_name = "model"
    extra = 1
    fields = ["position", "fallback"]
    autocomplete_fields = ["fallback"]


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "provider",
        "upstream_model",
        "tier",
        "priority",
        "weight",
        "context_window",
        "prices",
        "is_active",
        "usable",
    ]
    list_filter = ["provider", "tier", "is_active"]
    search_fields = ["name", "upstream_model"]
    list_editable = ["is_active", "priority"]  # weight on the model's page: the list is full
    inlines = [FallbackInline]

    @admin.display(description="credits per 1K in / out")
    def prices(self, model: LLMModel) -> str:
        return (
            f"{model.input_price_per_1k.normalize():f} / {model.output_price_per_1k.normalize():f}"
        )

    @admin.display(boolean=True, description="usable")
    def usable(self, model: LLMModel) -> bool:
        """Routable now: its credential variable is set (or it needs none)."""
        return model.is_active and catalog.is_configured(model)
