"""The request path's Redis client, against a real redis-server of the test's own (one it
may stop, start and flush)."""

import asyncio
import time

import pytest
import redis

from chatproject.redis_multiplexed import MultiplexedRedis, Script, _Protocol
from tests import outages

pytestmark = pytest.mark.skipif("redis" in outages.missing(), reason="needs redis-server")


@pytest.fixture
def server():
    server = outages.RedisServer()
    server.start()
    yield server
    server.close()


def test_concurrent_commands_share_one_write_and_get_their_own_replies(server, monkeypatch):
    writes = []
    flush = _Protocol.flush

    def counted(self):
        if self.outgoing:
            writes.append(len(self.outgoing))
        flush(self)

    monkeypatch.setattr(_Protocol, "flush", counted)

    async def scenario():
        client = MultiplexedRedis(server.url())
        await client.execute("PING")
        writes.clear()
        await asyncio.gather(*(client.execute("SET", f"k{i}", f"v{i}") for i in range(50)))
        values = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(50)))
        client.close()
        return values

    assert asyncio.run(scenario()) == [f"v{i}".encode() for i in range(50)]
    assert writes == [50, 50]  # each turn of the loop's commands: one write


def test_an_error_reply_is_raised_and_the_others_still_answered(server):
    async def scenario():
        client = MultiplexedRedis(server.url())
        await client.execute("SET", "text", "not a number")
        with pytest.raises(redis.ResponseError):
            await client.execute("INCR", "text")
        with pytest.raises(redis.ResponseError):
            await client.execute_many([("SET", "a", "1"), ("INCR", "text"), ("SET", "b", "2")])
        both = await client.execute("MGET", "a", "b")
        client.close()
        return both

    assert asyncio.run(scenario()) == [b"1", b"2"]


def test_a_cancelled_caller_leaves_the_replies_in_step(server):
    async def scenario():
        client = MultiplexedRedis(server.url())
        await client.execute("SET", "x", "1")
        slow = asyncio.ensure_future(client.execute("BLPOP", "nothing-here", "0.2"))
        await asyncio.sleep(0.05)
        slow.cancel()
        got = await client.execute("GET", "x")  # answered after BLPOP's own reply
        client.close()
        return got

    assert asyncio.run(scenario()) == b"1"


def test_a_script_is_loaded_again_after_redis_forgot_it(server):
    script = Script("return ARGV[1] .. KEYS[1]")

    async def scenario():
        client = MultiplexedRedis(server.url())
        first = await client.run_script(script, ["k"], ["a-"])
        await client.execute("SCRIPT", "FLUSH")
        again = await client.run_script(script, ["k"], ["b-"])
        client.close()
        return first, again

    assert asyncio.run(scenario()) == (b"a-k", b"b-k")


def test_the_database_in_the_url_is_selected(server):
    async def scenario():
        client = MultiplexedRedis(server.url(db=3))
        await client.execute("SET", "where", "three")
        client.close()

    asyncio.run(scenario())
    assert redis.Redis.from_url(server.url(db=3)).get("where") == b"three"
    assert redis.Redis.from_url(server.url(db=0)).get("where") is None


def test_redis_down_is_a_connection_error_and_back_is_used_again(server):
    async def scenario():
        client = MultiplexedRedis(server.url())
        await client.execute("SET", "before", "1")
        server.stop()
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            await client.execute("GET", "before")
        waited = time.monotonic() - started
        server.start()  # empty: it keeps nothing on disk
        after = await client.execute("SET", "after", "2"), await client.execute("GET", "after")
        client.close()
        return waited, after

    waited, after = asyncio.run(scenario())
    assert waited < 2  # two quick retries, then the error
    assert after == (b"OK", b"2")


def test_commands_in_flight_when_the_connection_drops_fail_and_the_next_reconnect(server):
    async def scenario():
        client = MultiplexedRedis(server.url())
        await client.execute("CLIENT", "SETNAME", "victim")
        killer = MultiplexedRedis(server.url())
        # Blocked in Redis when its connection is killed: retried on a new connection.
        blocked = asyncio.ensure_future(client.execute("BLPOP", "queue", "5"))
        await asyncio.sleep(0.1)
        await killer.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await asyncio.sleep(0.1)
        await killer.execute("RPUSH", "queue", "item")
        got = await asyncio.wait_for(blocked, 5)
        name = await client.execute("CLIENT", "GETNAME")  # a new connection: no name
        client.close()
        killer.close()
        return got, name

    assert asyncio.run(scenario()) == ([b"queue", b"item"], None)
