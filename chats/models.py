"""End users, chats and their messages. Every row belongs to one tenant."""

import uuid
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from chats.providers.registry import provider_choices


def validate_base_url(value: str) -> None:
    """http(s) with a host; unlike URLValidator, in-cluster names like ``vllm`` pass."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{value!r} is not an http(s) URL with a host.")


class EndUser(models.Model):
    """One of a tenant's own users, known by the tenant's id for them."""

    tenant = models.ForeignKey("billing.Tenant", on_delete=models.CASCADE, related_name="end_users")
    external_id = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "end user"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_id"], name="enduser_unique_per_tenant"
            )
        ]

    def __str__(self) -> str:
        return self.external_id


class Chat(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("billing.Tenant", on_delete=models.CASCADE, related_name="chats")
    end_user = models.ForeignKey(EndUser, on_delete=models.CASCADE, related_name="chats")
    title = models.CharField(max_length=255, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "end_user", "-created_at"])]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=32, blank=True)
    client_message_id = models.CharField(max_length=100, blank=True)
    # An answer's tool calls, {"id", "name", "arguments"} with the "output" or "error" of
    # those the server ran, so the chat's history gives them back to the model.
    # db_default: code from before the column was added can still insert messages.
    tool_calls = models.JSONField(default=list, db_default=[], blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["chat", "created_at", "id"])]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class LLMModel(models.Model):
    """A model the service can route to (a deployment), with its provider, limits and prices.

    Quality tiers route to the active models of that tier whose provider is configured,
    lowest ``priority`` first, models of equal priority sharing the tier's requests by
    ``weight``, so a tier falls back to the offline demo model when no provider
    credentials are set. A model that fails before its first token is followed by the
    rest of its tier, then by its own ``fallbacks`` (see ``chats.catalog``).
    """

    class Tier(models.TextChoices):
        """The quality tiers requests may name instead of a model (``chats.catalog``)."""

        CHEAP = "cheap"
        BALANCED = "balanced"
        FRONTIER = "frontier"

    name = models.CharField(max_length=100, unique=True, help_text="What clients ask for.")
    # The kinds the provider modules register (chats/providers/registry.py).
    provider = models.CharField(max_length=32, choices=provider_choices)
    upstream_model = models.CharField(max_length=200, help_text="The provider's model id.")
    base_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_base_url],
        help_text="Blank: the provider's public API. e.g. http://vllm:8000/v1",
    )
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="Environment variable holding the credential (never the key itself). "
        "Blank for servers that need none.",
    )
    tier = models.CharField(max_length=16, choices=Tier.choices, blank=True)
    priority = models.PositiveIntegerField(default=100, help_text="Lower wins within a tier.")
    weight = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Its share of the tier's requests among the models of equal priority.",
    )
    context_window = models.PositiveIntegerField(default=128000)
    max_output_tokens = models.PositiveIntegerField(default=1024)
    input_price_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    output_price_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["tier", "priority", "name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class ModelFallback(models.Model):
    """A model tried, in ``position`` order, when ``model`` fails before its first token."""

    model = models.ForeignKey(LLMModel, on_delete=models.CASCADE, related_name="fallback_links")
    fallback = models.ForeignKey(LLMModel, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField(default=0, help_text="Lower is tried first.")

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "fallback"
        constraints = [
            models.UniqueConstraint(fields=["model", "fallback"], name="fallback_once_per_model"),
            models.CheckConstraint(
                condition=~models.Q(model=models.F("fallback")), name="fallback_not_itself"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} → {self.fallback}"
