"""Tools a tenant defines for the server to run: webhooks the model may call."""

import secrets

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from chats.models import validate_base_url

# The tools the server itself provides; a tenant's tool cannot take their names.
BUILTIN_TOOL_NAMES = ("search_knowledge",)


def new_signing_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def validate_schema(value) -> None:
    if not isinstance(value, dict) or value.get("type", "object") != "object":
        raise ValidationError('A JSON schema of an object: {"type": "object", "properties": ...}.')


def validate_not_builtin(value: str) -> None:
    if value in BUILTIN_TOOL_NAMES:
        raise ValidationError(f"{value!r} is a built-in tool's name.")


class HttpTool(models.Model):
    """A tenant's tool: the model's arguments are POSTed to ``url`` as JSON, signed with
    HMAC-SHA256 under ``signing_secret``; the JSON answer is the tool's result."""

    tenant = models.ForeignKey("billing.Tenant", on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(
        max_length=64,
        validators=[
            RegexValidator(r"^[A-Za-z0-9_-]{1,64}$", "Use letters, digits, '_' or '-'."),
            validate_not_builtin,
        ],
        help_text="What the model calls it.",
    )
    description = models.TextField(blank=True, help_text="What the tool does, for the model.")
    parameters = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_schema],
        help_text="JSON schema of the arguments.",
    )
    url = models.CharField(max_length=500, validators=[validate_base_url])
    timeout_seconds = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(30.0)]
    )
    signing_secret = models.CharField(
        max_length=100,
        default=new_signing_secret,
        help_text="Verifies the X-Tool-Signature header of each call (HMAC-SHA256).",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "name"]
        verbose_name = "HTTP tool"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="httptool_unique_per_tenant")
        ]

    def __str__(self) -> str:
        return self.name
