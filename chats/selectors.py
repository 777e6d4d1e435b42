"""Reads on chats, always scoped to one tenant."""

import json
import uuid
from typing import Any

from django.db.models import Count, QuerySet

from billing.models import Tenant
from chatproject.errors import ApiError, ErrorCode
from chats.models import Chat, Message


def parse_chat_id(value: str | uuid.UUID) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "Invalid chat id.",
            details={"chat_id": [f"{value!r} is not a valid UUID."]},
        ) from None


def chat_get(*, tenant: Tenant, chat_id: uuid.UUID | str) -> Chat:
    """The tenant's chat; another tenant's chat is as missing as a deleted one."""
    return _chat_in(Chat.objects.select_related("end_user"), tenant, chat_id)


def chat_detail(*, tenant: Tenant, chat_id: uuid.UUID | str) -> Chat:
    """:func:`chat_get` with its ``message_count``: a count of every message it holds, so
    only for the chat's own description, not for each socket that opens it."""
    chats = Chat.objects.select_related("end_user").annotate(message_count=Count("messages"))
    return _chat_in(chats, tenant, chat_id)


def _chat_in(chats: QuerySet[Chat], tenant: Tenant, chat_id: uuid.UUID | str) -> Chat:
    chat = chats.filter(tenant=tenant, pk=parse_chat_id(chat_id)).first()
    if chat is None:
        raise ApiError(ErrorCode.CHAT_NOT_FOUND, "Chat not found.")
    return chat


def chat_get_for_user(*, tenant: Tenant, chat_id: uuid.UUID | str, user_id: str) -> Chat:
    """The tenant's chat of end user ``user_id``; another user's chat is as missing as a
    deleted one."""
    chat = chat_get(tenant=tenant, chat_id=chat_id)
    if chat.end_user.external_id != user_id:
        raise ApiError(ErrorCode.CHAT_NOT_FOUND, "Chat not found.")
    return chat


def chat_list_for_user(*, tenant: Tenant, user_id: str) -> QuerySet[Chat]:
    """An end user's chats, newest first."""
    return (
        Chat.objects.select_related("end_user")
        .annotate(message_count=Count("messages"))
        .filter(tenant=tenant, end_user__external_id=user_id)
        .order_by("-created_at", "-id")
    )


def message_list(*, chat: Chat, descending: bool = False) -> QuerySet[Message]:
    ordering = ["-created_at", "-id"] if descending else ["created_at", "id"]
    return Message.objects.filter(chat=chat).order_by(*ordering)


def chat_history(*, chat: Chat, limit: int) -> list[dict[str, Any]]:
    """The chat's last ``limit`` answered turns, oldest first, as provider messages.

    Failed and cancelled answers are left out: the model should not continue from them.
    An answer that ran tools is given back as the model made it: its tool calls, their
    results, then its text.
    """
    rows = (
        Message.objects.filter(chat=chat)
        .exclude(status__in=[Message.Status.FAILED, Message.Status.CANCELLED])
        .order_by("-created_at", "-id")
        .values_list("role", "content", "tool_calls")[:limit]
    )
    history: list[dict[str, Any]] = []
    for role, content, tool_calls in reversed(rows):
        history.extend(replayed_messages(role, content, tool_calls or []))
    return history


def replayed_messages(role: str, content: str, tool_calls: list[dict]) -> list[dict[str, Any]]:
    """A stored message as provider messages; tool calls nobody answered are left out."""
    answered = [call for call in tool_calls if "output" in call or "error" in call]
    if not answered:
        return [{"role": role, "content": content}]
    calls = [{key: call[key] for key in ("id", "name", "arguments")} for call in answered]
    results = [
        {
            "role": "tool",
            "tool_call_id": call["id"],
            "name": call["name"],
            "content": call["output"] if "output" in call else json.dumps({"error": call["error"]}),
        }
        for call in answered
    ]
    replay = [{"role": role, "content": "", "tool_calls": calls}, *results]
    return [*replay, {"role": role, "content": content}] if content else replay
