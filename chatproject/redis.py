"""The shared async Redis client, one per event loop (clients are bound to their loop)."""

import asyncio
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# Errors that mean the connection or the server is gone, not that a command was wrong.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
HEALTH_CHECK_SECONDS = 10  # a connection idle this long is pinged before it is used


def resilient_pool_options() -> dict:
    """redis-py options for a pool that outlives a Redis restart: a command that meets a
    connection broken meanwhile is tried again (twice, quickly) on a new one, and a
    connection idle for a while is checked before it is used."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }


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
            **resilient_pool_options(),
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client
