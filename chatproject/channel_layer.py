"""The Redis channel layer: a connection pool that waits when it is busy, and that lives
through Redis outages.

Without this, a Redis outage takes every WebSocket of the process down with it, and
leaves it worse afterwards:

- channels-redis runs one blocking receive (``BZPOPMIN``) per process for all its
  sockets; when Redis goes away that call raises, and the exception ends the consumer
  that happened to hold the receive (a handshake then fails as HTTP 500). Here the
  receive waits and tries again instead (:meth:`_brpop_with_clean`).
- the pool keeps the connections it opened before the outage. Each is found broken only
  when next used, and the command on it fails ("Connection lost"): with a large pool of
  idle connections, connects and group operations kept failing long after Redis was
  back. Here a command that meets a broken connection is retried once on a fresh one,
  and a connection idle for a while is checked (``PING``) before it is used.
"""

import asyncio
import logging

import redis.asyncio as aioredis
from channels_redis.core import RedisChannelLayer

from chatproject.redis import CONNECTION_ERRORS, resilient_pool_options

logger = logging.getLogger(__name__)

RECEIVE_RETRY_SECONDS = 1.0  # how often the receive tries Redis again while it is down


class BlockingRedisChannelLayer(RedisChannelLayer):
    """channels-redis on a pool that waits for a free connection: redis-py 8's default
    pool raises past 100 connections, which a burst of sockets joining and leaving their
    chats' groups reaches, failing those connects and disconnects."""

    def create_pool(self, index):
        host = dict(self.hosts[index])
        return aioredis.BlockingConnectionPool.from_url(
            host.pop("address"), **{**resilient_pool_options(), **host}
        )

    async def _brpop_with_clean(self, index, channel, timeout):
        # channels-redis 4.3's one Redis call per receive (see the module docstring). None
        # is "nothing arrived yet" to its caller, which then simply calls again.
        try:
            return await super()._brpop_with_clean(index, channel, timeout)
        except CONNECTION_ERRORS as exc:
            logger.warning("channel layer: Redis unavailable (%s); receiving again shortly", exc)
            await asyncio.sleep(RECEIVE_RETRY_SECONDS)
            return None
