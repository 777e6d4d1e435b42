"""The client messages of ``/ws/chat``: a frame's type, a chat message with its
options, a resume request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chatproject.errors import ApiError, ErrorCode
from chats.transports.schemas.readers import (
    MAX_ID_LENGTH,
    Errors,
    integer,
    json_object,
    number,
    string,
    strings,
)

WS_MESSAGE_TYPES = ("message", "resume", "cancel", "ping")
MAX_CLIENT_MESSAGE_ID_LENGTH = 100  # Message.client_message_id


def parse_ws_frame(value: Any) -> tuple[str, dict[str, Any]]:
    """A client message's type (``message`` when it names none) and its fields."""
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.VALIDATION_ERROR, "The message must be a JSON object.")
    kind = value.get("type", "message")
    if kind not in WS_MESSAGE_TYPES:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Unknown message type {kind!r}.",
            details={"type": ["Use message (default), resume, cancel or ping."]},
        )
    return kind, value


@dataclass(frozen=True)
class WsChatMessage:
    """``{"content": ...}``, with the options HTTP clients send in their bodies and
    headers (``cacheControl`` and ``idempotencyKey`` mean what the ``Cache-Control`` and
    ``Idempotency-Key`` headers mean)."""

    content: str
    exclude_tools: list[str] = field(default_factory=list)
    quality: str | None = None
    model: str | None = None
    temperature: float | None = None
    governor_metadata: dict[str, Any] | None = None
    client_message_id: str | None = None
    cache_control: str | None = None
    idempotency_key: str | None = None

    def options(self) -> dict[str, Any]:
        """The GenerationRequest options (None: the engine's default)."""
        return {
            "quality": self.quality,
            "model": self.model,
            "temperature": self.temperature,
            "governor_metadata": self.governor_metadata,
            "client_message_id": self.client_message_id,
            "cache_control": self.cache_control or "",
            "idempotency_key": self.idempotency_key or "",
        }


def parse_ws_message(body: dict[str, Any]) -> WsChatMessage:
    errors = Errors()
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    content = string(body, "content", errors, required=True, blank=False, max_length=limit)
    message = WsChatMessage(
        content=content or "",
        exclude_tools=strings(body, "excludeTools", errors),
        quality=string(body, "quality", errors),
        model=string(body, "model", errors),
        temperature=number(body, "temperature", errors, minimum=0, maximum=2),
        governor_metadata=json_object(body, "governorMetadata", errors),
        client_message_id=string(
            body, "client_message_id", errors, max_length=MAX_CLIENT_MESSAGE_ID_LENGTH
        ),
        cache_control=string(body, "cacheControl", errors, max_length=MAX_ID_LENGTH),
        idempotency_key=string(
            body, "idempotencyKey", errors, blank=False, max_length=MAX_ID_LENGTH
        ),
    )
    errors.raise_if_any()
    return message


def parse_ws_resume(body: dict[str, Any]) -> tuple[str, int]:
    """``{"type": "resume", "message_id", "after_index"}``: the answer's stream log id
    and the index of the last token the client had (-1: none)."""
    errors = Errors()
    message_id = string(body, "message_id", errors, required=True, max_length=64)
    log_id = None
    if message_id is not None:
        try:
            log_id = uuid.UUID(message_id).hex
        except ValueError:
            errors.add("message_id", "Must be the id of an answer (message_stream_started).")
    after = integer(body, "after_index", errors, minimum=-1)
    errors.raise_if_any()
    assert log_id is not None
    return log_id, -1 if after is None else after
