"""The stream logs in Redis, shared by every server process: each log a Redis Stream
(written in batches by :class:`~chats.stream_log.redis_writer.RedisSink`), capped in
length and expiring ``STREAM_LOG_TTL_SECONDS`` after its last write; a chat's active
stream, a stop request and an in-flight claim each a key with a time to live.

Readers follow a log with blocking reads, from its first entry on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import redis
from django.conf import settings

from billing.store import ClaimOnMiss
from chatproject.redis import get_redis
from chatproject.redis_multiplexed import get_multiplexed
from chats.stream_log.entries import (
    LogEnd,
    LogItem,
    LogToken,
    LogTrimmed,
    WireChunk,
    WireEnd,
    WireHeader,
    WireItem,
)
from chats.stream_log.redis_keys import (
    DELETE_IF,
    active_key,
    claim_key,
    log_key,
    stop_key,
    ttl_ms,
)
from chats.stream_log.redis_writer import RedisSink

logger = logging.getLogger(__name__)

BLOCK_MS = 1000  # one blocking read's wait; the follower re-checks its idle deadline after

Fields = dict[bytes, bytes]


class RedisLogStore:
    def sink(self, log_id: str) -> RedisSink:
        return RedisSink(log_id)

    async def follow(self, log_id: str, after: int) -> AsyncIterator[LogItem]:
        async for fields in _entries(log_id, until=b"e"):
            if b"e" in fields:
                yield LogEnd.from_dict(json.loads(fields[b"e"]))
                return
            if b"t" not in fields:
                continue
            first = int(fields[b"i"])
            for offset, text in enumerate(json.loads(fields[b"t"])):
                if first + offset > after:
                    yield LogToken(first + offset, text)

    async def wire_state(self, log_id: str) -> tuple[WireHeader | None, int | None]:
        async with get_redis().pipeline(transaction=False) as pipe:
            pipe.xrange(log_key(log_id), count=1)
            pipe.xrevrange(log_key(log_id), count=1)
            first, last = await pipe.execute()
        if not first or b"h" not in first[0][1]:
            return None, None
        header = WireHeader.from_json(first[0][1][b"h"])
        ended = last[0][1] if last and b"x" in last[0][1] else None
        return header, int(ended[b"n"]) if ended is not None else None

    async def follow_wire(self, log_id: str, after: int) -> AsyncIterator[WireItem]:
        expected = 0
        async for fields in _entries(log_id, until=b"x"):
            if b"x" in fields:
                yield WireEnd(fields[b"x"].decode())
                return
            if b"c" not in fields:
                continue
            first = int(fields[b"w"])
            if first > expected and first > after + 1:
                raise LogTrimmed(f"stream {log_id}: chunks before {first} are gone")
            chunks = json.loads(fields[b"c"])
            expected = first + len(chunks)
            for offset, data in enumerate(chunks):
                if first + offset > after:
                    yield WireChunk(first + offset, data)

    async def active_stream(
        self, tenant_id: int, stream_format: str, chat_ids: list[str]
    ) -> str | None:
        keys = [active_key(tenant_id, stream_format, chat_id) for chat_id in chat_ids]
        values = await get_redis().mget(keys)
        found = next((value for value in values if value), None)
        return found.decode() if isinstance(found, bytes) else found

    async def request_stop(self, log_id: str) -> None:
        """The writing process sees the request with its next flush."""
        await get_multiplexed().execute("SET", stop_key(log_id), b"1", "PX", ttl_ms())

    async def claim(self, cache_key: str, log_id: str, ttl: float) -> str | None:
        try:
            held = await get_multiplexed().execute(
                "SET", claim_key(cache_key), log_id, "NX", "GET", "PX", max(1, round(ttl * 1000))
            )
        except redis.RedisError:
            logger.warning("in-flight claim: Redis unavailable, request runs on its own")
            return None
        if isinstance(held, bytes):
            return held.decode()
        return held if isinstance(held, str) else None

    def claim_on_miss(self, cache_key: str, log_id: str, ttl: float) -> ClaimOnMiss:
        return ClaimOnMiss(claim_key(cache_key), log_id, max(1, round(ttl * 1000)))

    async def release(self, cache_key: str, log_id: str) -> None:
        try:
            await get_multiplexed().run_script(DELETE_IF, [claim_key(cache_key)], [log_id])
        except redis.RedisError:  # the claim then lapses after STREAM_LOG_TTL_SECONDS
            logger.warning("in-flight claim: Redis unavailable, claim left to expire")


async def _entries(log_id: str, *, until: bytes) -> AsyncIterator[Fields]:
    """The log's entries from its first, live until one holding ``until``."""
    key, last_id = log_key(log_id), b"0-0"
    idle_deadline = time.monotonic() + settings.LLM_TIMEOUT_SECONDS
    client = get_redis()
    while True:
        reply = await client.xread({key: last_id}, block=BLOCK_MS, count=100)
        if not reply:
            if time.monotonic() > idle_deadline:
                raise TimeoutError(f"stream log {log_id} had nothing new")
            continue
        idle_deadline = time.monotonic() + settings.LLM_TIMEOUT_SECONDS
        # As RESP2 (the client's protocol) answers: [[key, [(entry id, fields), ...]]].
        read: list[tuple[bytes, Fields]] = cast(list[list[Any]], reply)[0][1]
        for entry_id, fields in read:
            last_id = entry_id
            yield fields
            if until in fields:
                return
