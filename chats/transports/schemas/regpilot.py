"""The body of ``POST /api/ai/chat`` and ``/api/ai/chat/complete``: its parser and
its OpenAPI schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatproject import openapi_fragments as oa
from chats.catalog import DEFAULT_QUALITY, QUALITY_TIERS
from chats.transports.schemas.readers import (
    MAX_NAME_LENGTH,
    ROLES,
    TEMPERATURE,
    Errors,
    array,
    check_last_message,
    json_object,
    last_message_note,
    number,
    role_content_messages,
    role_content_schema,
    string,
    temperature_schema,
)

REGPILOT_TEMPERATURE = 0.7


@dataclass(frozen=True)
class RegPilotRequest:
    messages: list[dict[str, str]]
    quality: str | None
    temperature: float
    model: str | None
    governor_metadata: dict[str, Any] | None


def parse_regpilot(body: dict[str, Any]) -> RegPilotRequest:
    errors = Errors()
    items = array(body, "messages", errors)
    if items is None and "messages" not in errors.fields:
        errors.add("messages", "This field is required.")
    elif items == []:
        errors.add("messages", "This list may not be empty.")
    messages = role_content_messages(items or [], "messages", errors, roles=ROLES)
    check_last_message(messages, "messages", errors, must_be_user=False)
    quality = string(body, "quality", errors, choices=QUALITY_TIERS)
    temperature = number(
        body, "temperature", errors, minimum=TEMPERATURE[0], maximum=TEMPERATURE[1]
    )
    model = string(body, "model", errors, blank=False, max_length=MAX_NAME_LENGTH)
    governor_metadata = json_object(body, "governorMetadata", errors)
    errors.raise_if_any()
    return RegPilotRequest(
        messages=messages,
        quality=quality,
        temperature=REGPILOT_TEMPERATURE if temperature is None else temperature,
        model=model,
        governor_metadata=governor_metadata,
    )


def _regpilot_schema() -> oa.Schema:
    return oa.obj(
        {
            "messages": role_content_schema(ROLES, minItems=1, description=last_message_note()),
            "quality": oa.string(choices=QUALITY_TIERS, default=DEFAULT_QUALITY),
            "temperature": temperature_schema(REGPILOT_TEMPERATURE),
            "model": oa.string(
                blank=False,
                max_length=MAX_NAME_LENGTH,
                description="Overrides the quality routing.",
            ),
            "governorMetadata": oa.ref("GovernorMetadata"),
        },
        ("messages",),
    )


REGPILOT_REQUEST = oa.RequestBody(
    "AiChatRequest",
    parse_regpilot,
    _regpilot_schema,
    examples={
        "question": {"messages": [{"role": "user", "content": "What is a credit?"}]},
        "routed": {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi. How can I help?"},
                {"role": "user", "content": "Summarise our refund policy."},
            ],
            "quality": "cheap",
            "temperature": 0.2,
            "governorMetadata": {"actionType": "customer_support", "senderId": "user_12345"},
        },
    },
)
