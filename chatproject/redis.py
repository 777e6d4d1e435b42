"""The shared Redis clients: one async client per event loop (clients are bound to their
loop) and one blocking client for sync code, per process.

Their pools are the one limit on this process's Redis connections (at most
``REDIS_MAX_CONNECTIONS`` each): under a burst, a command waits up to
``POOL_WAIT_SECONDS`` for a free connection instead of failing, so a burst is not taken
for an outage (a limiter that falls back, or fails open, would then admit the burst).
"""

import asyncio
import threading
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# Errors that mean the connection or the server is gone, not that a command was wrong.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
HEALTH_CHECK_SECONDS = 10  # a connection idle this long is pinged before it is used
POOL_WAIT_SECONDS = 5  # past this, a pool with no free connection fails the command


def resilient_pool_options(retry_class: type = AsyncRetry) -> dict:
    """redis-py options for a pool that outlives a Redis restart: a command that meets a
    connection broken meanwhile is tried again (twice, quickly) on a new one, and a
    connection idle for a while is checked before it is used."""
    return {
        "retry": retry_class(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }


def _pool_options() -> dict:
    return {
        "max_connections": settings.REDIS_MAX_CONNECTIONS,
        "timeout": POOL_WAIT_SECONDS,
        "socket_connect_timeout": 5,
    }


_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def get_redis() -> aioredis.Redis:
    """The Redis client for the running loop; only call when ``settings.REDIS_URL`` is set."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, **_pool_options(), **resilient_pool_options()
        )
        client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = client
    return client


_sync_client: tuple[str, redis.Redis] | None = None
_sync_lock = threading.Lock()


def get_sync_redis() -> redis.Redis:
    """The blocking Redis client, safe to share between threads (DRF views run in them);
    only call when ``settings.REDIS_URL`` is set."""
    global _sync_client
    with _sync_lock:
        if _sync_client is None or _sync_client[0] != settings.REDIS_URL:
            pool = redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL,
                socket_timeout=5,
                **_pool_options(),
                **resilient_pool_options(Retry),
            )
            _sync_client = (settings.REDIS_URL, redis.Redis(connection_pool=pool))
        return _sync_client[1]
