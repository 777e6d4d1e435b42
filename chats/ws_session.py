"""Who a ``/ws/chat`` connection is, checked before its handshake is accepted and again
while it stays open: the key (read as HTTP reads it, or from the query's ``api_key``,
since browsers cannot set headers on a WebSocket), the end user, and the chat (opened
by the chat services); and the chat's earlier turns, which the model is given."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.utils.datastructures import CaseInsensitiveMapping

from billing.authentication import presented_key
from billing.key_cache import api_key_resolve_async
from billing.models import Tenant
from billing.services import api_key_recheck
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode
from chats import selectors, services
from chats.models import Chat

# Close codes (4000-4999 are the application's).
CLOSE_UNAUTHORIZED = 4001
CLOSE_BAD_REQUEST = 4400
CLOSE_CHAT_NOT_FOUND = 4004

KEY_RECHECK_SECONDS = 5.0
MAX_USER_ID_LENGTH = 255  # EndUser.external_id


class Refused(Exception):
    """The connection is refused: ``error`` is sent, then the socket closes with
    ``close_code``."""

    def __init__(self, error: ApiError, close_code: int) -> None:
        super().__init__(error.message)
        self.error, self.close_code = error, close_code


@dataclass
class Session:
    tenant: Tenant
    api_key_id: int
    user_id: str
    chat: Chat
    user_created: bool  # the end user was new
    checked_at: float
    # The chat's answered turns, loaded once and kept up to date from this socket's
    # exchanges and the other sockets' fanned-out events (best effort, like the channel
    # layer: a lost event costs the model one turn of context, nothing stored).
    history: list[dict[str, Any]] | None = None

    async def recheck(self) -> None:
        """Keys are revoked, expire and tenants are deactivated while a socket stays
        open: check again (at most every KEY_RECHECK_SECONDS), picking up plan changes
        too. Raises ApiError (UNAUTHORIZED)."""
        now = time.monotonic()
        if now - self.checked_at >= KEY_RECHECK_SECONDS:
            api_key = await db_call(api_key_recheck, self.api_key_id)
            self.tenant, self.checked_at = api_key.tenant, now

    async def turns(self) -> list[dict[str, Any]]:
        if self.history is None:
            self.history = await db_call(
                selectors.chat_history, chat=self.chat, limit=settings.CHAT_MAX_HISTORY_MESSAGES
            )
        return self.history

    def remember(self, role: str, content: str, tool_calls: list | None = None) -> None:
        if self.history is not None:
            self.history.extend(selectors.replayed_messages(role, content, tool_calls or []))
            del self.history[: -settings.CHAT_MAX_HISTORY_MESSAGES]

    def remember_event(self, event: dict[str, Any]) -> None:
        """Another socket's exchange on this chat, from its fanned-out events."""
        if event["type"] == "message_received":
            self.remember("user", event["content"])
        elif event["type"] == "message_stream_ended" and event["status"] == "complete":
            self.remember("assistant", event["content"], event.get("tool_calls"))


async def session_open(scope: Mapping[str, Any]) -> Session:
    """The connection's session; raises :class:`Refused`."""
    query = {
        name: values[0]
        for name, values in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()
    }
    headers = CaseInsensitiveMapping(
        {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    )
    try:
        api_key = await api_key_resolve_async(query.get("api_key") or presented_key(headers))
    except ApiError as error:
        raise Refused(error, CLOSE_UNAUTHORIZED) from None
    user_id = (query.get("user_id") or "").strip()
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH or "\x00" in user_id:
        missing = ApiError(
            ErrorCode.VALIDATION_ERROR,
            "user_id is required in the query string (at most 255 characters, no NUL).",
            details={"user_id": ["This field is required."]},
        )
        raise Refused(missing, CLOSE_BAD_REQUEST)
    tenant = api_key.tenant
    try:
        chat, user_created = await db_call(_open_chat, tenant, user_id, query.get("chat_id"))
    except ApiError as error:
        raise Refused(error, CLOSE_CHAT_NOT_FOUND) from None
    return Session(tenant, api_key.pk, user_id, chat, user_created, time.monotonic())


def _open_chat(tenant: Tenant, user_id: str, chat_id: str | None) -> tuple[Chat, bool]:
    """The end user's chat ``chat_id``, or a new chat of theirs when none is named."""
    if chat_id:
        return selectors.chat_get_for_user(tenant=tenant, chat_id=chat_id, user_id=user_id), False
    return services.chat_create(tenant=tenant, user_id=user_id)
