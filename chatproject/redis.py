"""The shared async Redis client, one per event loop (clients are bound to their loop)."""

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def get_redis() -> aioredis.Redis:
    """The Redis client for the running loop; only call when ``settings.REDIS_URL`` is set."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=5, health_check_interval=30
        )
        _clients[loop] = client
    return client
