"""What every request body parser shares: the limits, the :class:`Errors` collector, and
typed field readers with the OpenAPI pieces that describe them.

No coercion: a string must be a JSON string, a number a JSON number (``true`` is not 1),
an object a JSON object. Every problem is collected, and the request is refused once
with ``VALIDATION_ERROR`` whose ``details`` name each field (``messages[2].role``).
``null`` counts as absent, as most JSON clients send it for unset options.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings

from chatproject import openapi_fragments as oa
from chatproject.errors import ApiError, ErrorCode
from chats.catalog import QUALITY_TIERS

# The limits the parsers apply; the OpenAPI fragments are built from the same ones.
ROLES = ("user", "assistant", "system")
MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 100  # a model's or a user's name
MAX_INTEGER = 2**31 - 1  # no count in a body is larger; a database column would refuse more
TEMPERATURE = (0, 2)
TIER_OR_MODEL = "A catalog model name, or a quality tier: " + ", ".join(
    f"`{tier}`" for tier in QUALITY_TIERS
)


class Errors:
    """Field errors collected while validating one body."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.fields.setdefault(name, []).append(message)

    def raise_if_any(self) -> None:
        if self.fields:
            first = next(iter(self.fields))
            raise ApiError(
                ErrorCode.VALIDATION_ERROR,
                f"Invalid request: {first}: {self.fields[first][0]}",
                details=self.fields,
            )


# --- Typed field readers (each returns None when the value is absent or invalid) ---------


def string(
    body: dict[str, Any],
    key: str,
    errors: Errors,
    *,
    name: str | None = None,
    required: bool = False,
    blank: bool = True,
    max_length: int | None = None,
    choices: tuple[str, ...] | None = None,
) -> str | None:
    name = name or key
    value = body.get(key)
    if value is None:
        if required:
            errors.add(name, "This field is required.")
        return None
    if not isinstance(value, str):
        errors.add(name, "Must be a string.")
        return None
    if not blank and not value.strip():
        errors.add(name, "This field may not be blank.")
        return None
    if max_length is not None and len(value) > max_length:
        errors.add(name, f"Ensure this field has no more than {max_length} characters.")
        return None
    if choices is not None and value not in choices:
        errors.add(name, f"Must be one of: {', '.join(choices)}.")
        return None
    return value


def number(
    body: dict[str, Any], key: str, errors: Errors, *, minimum: float, maximum: float
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        errors.add(key, "Must be a number.")
        return None
    if not minimum <= value <= maximum:
        errors.add(key, f"Must be between {minimum:g} and {maximum:g}.")
        return None
    return float(value)


def integer(body: dict[str, Any], key: str, errors: Errors, *, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(key, "Must be an integer.")
        return None
    if value < minimum:
        errors.add(key, f"Must be at least {minimum}.")
        return None
    if value > MAX_INTEGER:
        errors.add(key, f"Must be at most {MAX_INTEGER}.")
        return None
    return value


def boolean(body: dict[str, Any], key: str, errors: Errors, *, name: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        errors.add(name or key, "Must be a boolean.")
        return False
    return value


def json_object(body: dict[str, Any], key: str, errors: Errors) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add(key, "Must be an object.")
        return None
    return value


def array(
    body: dict[str, Any], key: str, errors: Errors, *, max_items: int | None = None
) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        errors.add(key, "Must be an array.")
        return None
    if max_items is not None and len(value) > max_items:
        errors.add(key, f"Ensure this list has no more than {max_items} items.")
        return None
    return value


def strings(body: dict[str, Any], key: str, errors: Errors) -> list[str]:
    """An array of strings (empty when absent or invalid)."""
    items = array(body, key, errors) or []
    if not all(isinstance(item, str) for item in items):
        errors.add(key, "Must be an array of strings.")
        return []
    return items


def role_content_messages(
    items: list[Any], key: str, errors: Errors, *, roles: tuple[str, ...]
) -> list[dict[str, str]]:
    """``[{role, content}]`` with string content, as /api/ai/chat and /api/v1/chat/* take them."""
    messages = []
    for index, item in enumerate(items):
        name = f"{key}[{index}]"
        if not isinstance(item, dict):
            errors.add(name, "Must be an object with role and content.")
            continue
        role = string(item, "role", errors, name=f"{name}.role", required=True, choices=roles)
        content = string(item, "content", errors, name=f"{name}.content", required=True)
        if role is not None and content is not None:
            messages.append({"role": role, "content": content})
    return messages


def check_last_message(
    messages: list[dict[str, str]], key: str, errors: Errors, *, must_be_user: bool
) -> None:
    if not messages:
        return
    last = messages[-1]
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    name = f"{key}[{len(messages) - 1}]"
    if must_be_user and last["role"] != "user":
        errors.add(f"{name}.role", "The last message must be the user's.")
    if len(last["content"]) > limit:
        errors.add(f"{name}.content", f"Ensure this field has no more than {limit} characters.")


def role_content_schema(roles: tuple[str, ...], **extra: Any) -> oa.Schema:
    item = oa.obj({"role": oa.string(choices=roles), "content": oa.string()}, ("role", "content"))
    return oa.array(item, **extra)


def temperature_schema(default: float) -> oa.Schema:
    low, high = TEMPERATURE
    return {"type": "number", "minimum": low, "maximum": high, "default": default}


def last_message_note() -> str:
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    return f"The last message's content is at most {limit} characters."
