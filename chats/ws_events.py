"""The server → client events of ``/ws/chat``, typed (seed 002, SPEC §4.2)."""

from typing import Any, Literal, NotRequired, TypedDict

from chatproject.errors import ApiError


class ConnectionEstablished(TypedDict):
    type: Literal["connection_established"]
    chat_id: str
    user_id: str
    connection_id: str


class UserCreated(TypedDict):
    type: Literal["user_created"]
    user_id: str


class MessageReceived(TypedDict):
    type: Literal["message_received"]
    message_id: str
    chat_id: str
    content: str
    created_at: str
    client_message_id: NotRequired[str]


class MessageStreamStarted(TypedDict):
    type: Literal["message_stream_started"]
    message_id: str
    chat_id: str
    model: str
    cache_status: str
    governor: dict[str, Any] | None


class MessageStreamToken(TypedDict):
    type: Literal["message_stream_token"]
    message_id: str
    token: str
    index: int


class MessageStreamEnded(TypedDict):
    type: Literal["message_stream_ended"]
    message_id: str
    chat_id: str
    content: str
    status: str
    usage: dict[str, int]
    finish_reason: str
    credits_charged: str
    credits_remaining: str


class Error(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    retryable: bool
    details: NotRequired[dict[str, Any]]
    message_id: NotRequired[str]
    request_id: NotRequired[str]


class Pong(TypedDict):
    type: Literal["pong"]


def error_event(error: ApiError, **extra: Any) -> Error:
    return {"type": "error", **error.event(), **extra}  # type: ignore[typeddict-item]
