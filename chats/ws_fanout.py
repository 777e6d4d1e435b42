"""A ``/ws/chat`` socket's whole events (a message received, an answer ended), fanned out
to its chat's other sockets, in any process, through the channel layer's group of the
chat. Tokens are not: they go only to the socket that asked.

Most chats have one socket. A group send to it alone would cost four Redis round trips
and a delivery back to the sender, who drops it; so the group's members are looked up
first (one round trip) and nothing is sent when the sender is the only one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from channels.layers import BaseChannelLayer, InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from chatproject.redis_multiplexed import get_multiplexed

logger = logging.getLogger(__name__)

HANDLER = "chat.event"  # the message type: the consumers' ``chat_event`` receives it


def group_name(chat_id: object) -> str:
    return f"chat.{chat_id}"


class ChatGroup:
    """A socket's membership of its chat's group, and what it publishes there: in the
    background and in order, so the asking socket's stream does not wait for Redis.
    Publishing goes on after the socket left (an answer left running ends later)."""

    def __init__(self) -> None:
        self._member: tuple[BaseChannelLayer, str, str] | None = None  # layer, group, channel
        self._publishing: asyncio.Future[None] | None = None

    async def join(self, layer: BaseChannelLayer, chat_id: object, channel_name: str) -> None:
        self._member = (layer, group_name(chat_id), channel_name)
        await layer.group_add(group_name(chat_id), channel_name)

    async def leave(self) -> None:
        if self._member is None:
            return
        layer, group, channel = self._member
        try:
            await layer.group_discard(group, channel)
        except Exception:  # Redis down: the membership expires with the group
            logger.warning("channel layer: could not leave the chat's group", exc_info=True)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Tell the chat's other sockets about ``event`` (best effort)."""
        if self._member is None:
            return
        layer, group, channel = self._member
        previous = self._publishing

        async def publish() -> None:
            if previous is not None:
                await previous
            try:
                if await _has_others(layer, group, channel):
                    message = {"type": HANDLER, "event": event, "sender": channel}
                    await layer.group_send(group, message)
            except Exception:  # best effort; the asking socket has its answer
                logger.exception("channel layer fan-out failed")

        self._publishing = asyncio.ensure_future(publish())

    async def published(self) -> None:
        """Once what was published has gone out."""
        if self._publishing is not None:
            with contextlib.suppress(Exception):
                await self._publishing

    def sent_here(self, message: Mapping[str, Any]) -> bool:
        """``message`` of the group came from this socket (which sent its event already)."""
        return self._member is not None and message["sender"] == self._member[2]


async def _has_others(layer: BaseChannelLayer, group: str, channel: str) -> bool:
    """Whether ``group`` has a member besides ``channel`` (a lapsed one counts: it is
    only sent to for nothing). Read from the layer's own record of the group."""
    if isinstance(layer, RedisChannelLayer):
        index = layer.consistent_hash(group)
        key = layer._group_key(group)
        if layer.hosts[index].get("address") == settings.REDIS_URL:  # the usual set-up
            members = await get_multiplexed().execute("ZRANGE", key, 0, -1)
        else:
            members = await layer.connection(index).zrange(key, 0, -1)
        return any(member.decode() != channel for member in members)
    if isinstance(layer, InMemoryChannelLayer):
        return any(member != channel for member in layer.groups.get(group, {}))
    return True  # another layer: send, and the sender drops its own
