"""Writes on end users, chats and messages."""

from typing import Any

from django.db import IntegrityError, transaction

from billing.models import Tenant
from chats.models import Chat, EndUser


def end_user_get_or_create(*, tenant: Tenant, external_id: str) -> tuple[EndUser, bool]:
    """The tenant's end user; ``True`` when this call created it. Safe under races."""
    try:
        with transaction.atomic():
            return EndUser.objects.get_or_create(tenant=tenant, external_id=external_id)
    except IntegrityError:  # created concurrently between the get and the create
        return EndUser.objects.get(tenant=tenant, external_id=external_id), False


def chat_create(
    *, tenant: Tenant, user_id: str, title: str = "", metadata: dict[str, Any] | None = None
) -> tuple[Chat, bool]:
    """Create a chat for an end user (created on first use). Returns (chat, user_created)."""
    end_user, user_created = end_user_get_or_create(tenant=tenant, external_id=user_id)
    chat = Chat.objects.create(
        tenant=tenant, end_user=end_user, title=title or "", metadata=metadata or {}
    )
    chat.message_count = 0  # type: ignore[attr-defined]  # as the selectors annotate it
    return chat, user_created


def chat_delete(*, chat: Chat) -> None:
    """Delete a chat; its messages go with it (database cascade)."""
    chat.delete()
