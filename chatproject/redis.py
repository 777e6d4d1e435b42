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
        # A blocking pool: under a burst, callers wait for a free connection instead of
        # failing (a limiter that fails open would then admit the burst).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=5,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client
