"""The Redis channel layer, with a connection pool that waits when it is busy."""

import redis.asyncio as aioredis
from channels_redis.core import RedisChannelLayer


class BlockingRedisChannelLayer(RedisChannelLayer):
    """channels-redis on a pool that waits for a free connection: redis-py 8's default
    pool raises past 100 connections, which a burst of sockets joining and leaving their
    chats' groups reaches, failing those connects and disconnects."""

    def create_pool(self, index):
        host = dict(self.hosts[index])
        return aioredis.BlockingConnectionPool.from_url(host.pop("address"), **host)
