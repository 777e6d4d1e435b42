"""The WebSocket consumer's base: Channels' ``AsyncWebsocketConsumer`` without its thread
hand-off before every message.

Channels closes the handling thread's stale database connections before each message it
dispatches (``aclose_old_connections``, through ``sync_to_async``): a thread hop for every
client frame and every fanned-out event. This consumer's database work runs on the
database executor's threads (:func:`chatproject.db.db_call`, which closes its own) or the
event loop's pool (:mod:`chatproject.async_db`); the loop's thread holds no ORM
connection, so there is nothing to close.
"""

from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer


class AsyncWebsocketConsumerOnLoop(AsyncWebsocketConsumer):
    async def dispatch(self, message: Any) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
