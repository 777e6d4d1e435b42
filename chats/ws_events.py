"""The server → client events of ``/ws/chat`` (docs/wire-formats.md: chat management):
their types, and the functions that build them, so the consumer only decides when to send
which."""

import json
from typing import Any, Literal, NotRequired, TypedDict

from chatproject.errors import ApiError
from chats.engine import ErrorEvent, FinishedEvent, Generation, StoredMessage, TokenEvent
from chats.engine import Event as EngineEvent
from chats.tool_loop import ToolResult, ToolStarted
from chats.transports.encoding import credits_number


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
    status: Literal["complete", "failed", "cancelled"]
    usage: dict[str, int]
    finish_reason: str
    model: str
    # Numbers, as in every other format (6 decimals fit a double); null while not settled
    # (the database was down when the answer ended).
    credits_charged: float | None
    credits_remaining: float | None
    tool_calls: NotRequired[list[dict[str, Any]]]  # the answer's, when it made any


class ToolCallStarted(TypedDict):
    type: Literal["tool_call_started"]
    message_id: str
    tool_call_id: str
    name: str
    arguments: Any  # the model's arguments (their JSON text when they are not JSON)


class ToolCallEnded(TypedDict):
    type: Literal["tool_call_ended"]
    message_id: str
    tool_call_id: str
    name: str
    arguments: Any
    status: Literal["ok", "error"]
    result: NotRequired[Any]
    error: NotRequired[str]


class Error(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    retryable: bool
    details: NotRequired[dict[str, Any]]
    message_id: NotRequired[str]
    request_id: NotRequired[str]
    partial_content: NotRequired[str]


class Pong(TypedDict):
    type: Literal["pong"]


Event = (
    ConnectionEstablished
    | UserCreated
    | MessageReceived
    | MessageStreamStarted
    | MessageStreamToken
    | MessageStreamEnded
    | ToolCallStarted
    | ToolCallEnded
    | Error
    | Pong
)


def connection_established(chat_id, user_id: str, connection_id: str) -> ConnectionEstablished:
    return {
        "type": "connection_established",
        "chat_id": str(chat_id),
        "user_id": user_id,
        "connection_id": connection_id,
    }


def user_created(user_id: str) -> UserCreated:
    return {"type": "user_created", "user_id": user_id}


def message_received(chat_id, stored: StoredMessage, client_message_id: str) -> MessageReceived:
    event: MessageReceived = {
        "type": "message_received",
        "message_id": str(stored.id),
        "chat_id": str(chat_id),
        "content": stored.content,
        "created_at": stored.created_at.isoformat(),
    }
    if client_message_id:
        event["client_message_id"] = client_message_id
    return event


def message_stream_started(chat_id, generation: Generation) -> MessageStreamStarted:
    return {
        "type": "message_stream_started",
        "message_id": str(generation.message_id),
        "chat_id": str(chat_id),
        "model": generation.model_name,
        "cache_status": generation.cache_status,
        "governor": generation.decision.result,
    }


def message_stream_token(message_id: str, token: str, index: int) -> MessageStreamToken:
    return {
        "type": "message_stream_token",
        "message_id": message_id,
        "token": token,
        "index": index,
    }


def message_stream_ended(
    chat_id, generation: Generation, *, status, content: str, reason: str, figures
) -> MessageStreamEnded:
    """``figures``: the engine's FinishedEvent, ErrorEvent or Outcome (usage and credits)."""
    event: MessageStreamEnded = {
        "type": "message_stream_ended",
        "message_id": str(generation.message_id),
        "chat_id": str(chat_id),
        "content": content,
        "status": status,
        "usage": figures.usage.to_dict(),
        "finish_reason": reason,
        "model": generation.model_name,
        "credits_charged": credits_number(figures.credits_charged),
        "credits_remaining": credits_number(figures.credits_remaining),
    }
    tool_calls = getattr(figures, "tool_calls", ())
    if tool_calls:
        event["tool_calls"] = list(tool_calls)
    return event


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_call_started(message_id: str, started: ToolStarted) -> ToolCallStarted:
    return {
        "type": "tool_call_started",
        "message_id": message_id,
        "tool_call_id": started.call_id,
        "name": started.name,
        "arguments": _json_or_text(started.arguments),
    }


def tool_call_ended(message_id: str, result: ToolResult) -> ToolCallEnded:
    event: ToolCallEnded = {
        "type": "tool_call_ended",
        "message_id": message_id,
        "tool_call_id": result.call_id,
        "name": result.name,
        "arguments": _json_or_text(result.arguments),
        "status": "ok" if result.error is None else "error",
    }
    if result.error is None:
        event["result"] = _json_or_text(result.output or "")
    else:
        event["error"] = result.error
    return event


def answer_event(message_id: str, event: EngineEvent) -> Event | None:
    """The event a token or a server tool's call of the answer is sent as; None for the
    engine's events this format does not send (tool call pieces, steps) and its ends."""
    if isinstance(event, TokenEvent):
        return message_stream_token(message_id, event.text, event.index)
    if isinstance(event, ToolStarted):
        return tool_call_started(message_id, event)
    if isinstance(event, ToolResult):
        return tool_call_ended(message_id, event)
    return None


def answer_ended(
    chat_id, generation: Generation, end: FinishedEvent | ErrorEvent, status, request_id: str
) -> tuple[Event, MessageStreamEnded]:
    """How the answer ended, as the asking socket is told (the error, when it failed) and
    as the chat's other sockets are."""
    ended = message_stream_ended(
        chat_id,
        generation,
        status=status,
        content=end.content,
        reason="error" if isinstance(end, ErrorEvent) else end.finish_reason,
        figures=end,
    )
    if not isinstance(end, ErrorEvent):
        return ended, ended
    failure = error_event(
        end.error,
        message_id=str(generation.message_id),
        request_id=request_id,
        partial_content=end.content,
    )
    return failure, ended


def error_event(error: ApiError, **extra: Any) -> Error:
    return {"type": "error", **error.event(), **extra}  # type: ignore[typeddict-item]


PONG: Pong = {"type": "pong"}
