"""Writes on end users, chats and messages."""

import functools
import uuid
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
    *,
    tenant: Tenant,
    user_id: str,
    title: str = "",
    metadata: dict[str, Any] | None = None,
    chat_id: uuid.UUID | None = None,
) -> tuple[Chat, bool]:
    """Create a chat for an end user (created on first use). Returns (chat, user_created).
    ``chat_id``: the new chat's id (IntegrityError if a chat has it)."""
    end_user, user_created = end_user_get_or_create(tenant=tenant, external_id=user_id)
    fields = {"id": chat_id} if chat_id is not None else {}
    chat = Chat.objects.create(
        tenant=tenant,
        end_user=end_user,
        title=(title or "")[:255],
        metadata=metadata or {},
        **fields,
    )
    chat.message_count = 0  # type: ignore[attr-defined]  # as the selectors annotate it
    return chat, user_created


def chat_delete(*, chat: Chat) -> None:
    """Delete a chat; its messages go with it (database cascade)."""
    chat.delete()


# --- Chats named by the client ---------------------------------------------------------

# Client-chosen conversation keys map to chat ids in this namespace (with the tenant's id),
# so the same key always finds the same chat and two tenants' keys never meet.
CONVERSATION_NAMESPACE = uuid.UUID("6f1c2d4e-8a43-5b9e-9c1d-3f2b7a6e5d10")


def conversation_chat_id(tenant: Tenant, key: str) -> uuid.UUID:
    return uuid.uuid5(CONVERSATION_NAMESPACE, f"{tenant.pk}:{key}")


def chat_open(
    *,
    tenant: Tenant,
    key: str | uuid.UUID,
    user_id: str,
    title: str = "",
    metadata: dict[str, Any] | None = None,
    fresh: bool = False,
) -> tuple[Chat, bool]:
    """The tenant's chat for a client-chosen key, created (for end user ``user_id``) on
    first use, and whether this call created it. Sync (database).

    A key that is the id of one of the tenant's own chats (one made through the REST API)
    is that chat. Any other key maps to ``uuid5(tenant, key)``: stable across requests,
    and the same whether or not another tenant has a chat with that id, so the answer
    never depends on other tenants' data. ``fresh``: the key is a UUID the server just
    made for a new conversation, and becomes the chat's id.
    """
    new = functools.partial(_chat_get_or_create, tenant, user_id, title, metadata)
    if fresh:
        found = new(uuid.UUID(str(key)))
        assert found is not None, "a new random chat id is never another tenant's"
        return found
    own_id = _as_uuid(key)
    if own_id is not None:
        key = str(own_id)  # one spelling per UUID
        own = Chat.objects.filter(pk=own_id, tenant=tenant).only("id", "tenant_id").first()
        if own is not None:
            return own, False
    found = new(conversation_chat_id(tenant, str(key)))
    if found is None:  # the derived id is taken: only a deliberate collision gets here
        found = new(uuid.uuid4())
    assert found is not None, "a new random chat id is never another tenant's"
    return found


def _as_uuid(key: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(key, uuid.UUID):
        return key
    try:
        return uuid.UUID(key)
    except ValueError:
        return None


def _chat_get_or_create(
    tenant: Tenant, user_id: str, title: str, metadata: dict | None, chat_id: uuid.UUID
) -> tuple[Chat, bool] | None:
    """The tenant's chat ``chat_id`` and whether it was created now (no chat had that
    id); None if another tenant's chat has it."""
    for _ in range(2):
        existing = Chat.objects.filter(pk=chat_id).only("id", "tenant_id").first()
        if existing is not None:
            return (existing, False) if existing.tenant_id == tenant.pk else None
        try:
            with transaction.atomic():
                chat, _ = chat_create(
                    tenant=tenant, user_id=user_id, title=title, metadata=metadata, chat_id=chat_id
                )
        except IntegrityError:  # created concurrently: read it again
            continue
        return chat, True
    return None
