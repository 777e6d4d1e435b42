"""The stream log: each running generation's tokens, replayable by any process.

A generation appends its tokens as they go out (:class:`LogWriter`, no I/O per token);
any request, in any process, reads them from the start or after a token index and
follows live until the end entry (:func:`follow`). With ``REDIS_URL`` each log is a
Redis Stream, appended in batches: the tokens gathered over ``STREAM_LOG_FLUSH_MS`` (or
``STREAM_LOG_BATCH`` of them, whichever comes first) go out as one entry, XADD and
PEXPIRE in one pipeline. A log is capped in length and expires ``STREAM_LOG_TTL_SECONDS``
after its last write. Without Redis the log lives in this process's memory.

In-flight claims (:func:`claim`): the first of identical cacheable requests claims its
cache key for its log; an identical request arriving while it runs finds the claim and
follows that log instead of generating the answer again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from billing.ratelimit import redis_gate
from chatproject.redis import get_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "streams"
MAX_ENTRIES = 10_000  # a log's length cap (approximate trimming); entries hold batches
BLOCK_MS = 1000  # one blocking read's wait; the follower re-checks its idle deadline after


def _log_key(log_id: str) -> str:
    return f"{KEY_PREFIX}:log:{log_id}"


def _claim_key(cache_key: str) -> str:
    return f"{KEY_PREFIX}:inflight:{cache_key}"


@dataclass(frozen=True, slots=True)
class LogToken:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class LogEnd:
    status: str  # the generation's stored status: complete, failed or cancelled
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "s": self.status,
            "f": self.finish_reason,
            "p": self.prompt_tokens,
            "o": self.completion_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogEnd:
        return cls(str(data["s"]), str(data["f"]), int(data["p"]), int(data["o"]))


LogItem = LogToken | LogEnd


# --- In memory (no Redis): one process -------------------------------------------------


@dataclass
class _MemoryLog:
    tokens: list[str] = field(default_factory=list)
    end: LogEnd | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


_memory_logs: dict[str, _MemoryLog] = {}
_memory_claims: dict[str, tuple[str, float]] = {}  # claim key → (log id, expires at)


def _memory_log(log_id: str) -> _MemoryLog:
    log = _memory_logs.get(log_id)
    if log is None:
        log = _memory_logs[log_id] = _MemoryLog()
    return log


def _ttl() -> float:
    return float(settings.STREAM_LOG_TTL_SECONDS)


# --- Writing ---------------------------------------------------------------------------


class LogWriter:
    """Appends one generation's tokens to its log; :meth:`close` writes the end entry.

    ``append`` only buffers (in memory it appends to the process's log directly); with
    Redis a timer started by the first token of a batch sends the batch, and one flush at a
    time goes out, so batches stay in order and grow while Redis answers.
    """

    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        self._next_index = 0  # index of the first buffered token
        self._buffer: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._draining: asyncio.Task | None = None
        self._closed = False
        self._memory = None if settings.REDIS_URL else _memory_log(log_id)

    def append(self, text: str) -> None:
        if self._closed:
            return
        if self._memory is not None:
            self._memory.tokens.append(text)
            self._memory.notify()
            return
        self._buffer.append(text)
        if len(self._buffer) >= settings.STREAM_LOG_BATCH:
            self._kick()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(settings.STREAM_LOG_FLUSH_MS / 1000, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self, end: LogEnd | None = None) -> None:
        while self._buffer or end is not None:
            batch, self._buffer = self._buffer, []
            first, self._next_index = self._next_index, self._next_index + len(batch)
            fields = [{"i": first, "t": json.dumps(batch, ensure_ascii=False)}] if batch else []
            if end is not None and not self._buffer:
                fields.append({"e": json.dumps(end.to_dict())})
                end = None
            await self._send(fields)

    async def _send(self, entries: list[dict[str, Any]]) -> None:
        key = _log_key(self.log_id)
        try:
            async with redis_gate(), get_redis().pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(key, entry, maxlen=MAX_ENTRIES, approximate=True)
                pipe.pexpire(key, max(1, round(_ttl() * 1000)))
                await pipe.execute()
        except redis.RedisError:  # followers then time out; the generation goes on
            logger.warning("stream log %s: Redis unavailable, entries lost", self.log_id)

    async def close(self, end: LogEnd) -> None:
        """Write what is buffered and the end entry; the log expires a while after."""
        if self._closed:
            return
        self._closed = True
        if self._memory is not None:
            self._memory.end = end
            self._memory.notify()
            asyncio.get_running_loop().call_later(_ttl(), _memory_logs.pop, self.log_id, None)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._draining is not None:
            await asyncio.shield(self._draining)
        await self._drain(end)


# --- Reading ---------------------------------------------------------------------------


async def follow(log_id: str, after: int = -1) -> AsyncIterator[LogItem]:
    """The log's tokens with an index above ``after``, live until its end entry, then
    that entry. Raises TimeoutError when the log gets no entry for
    ``LLM_TIMEOUT_SECONDS`` (its writer died, or never started)."""
    source = _follow_redis if settings.REDIS_URL else _follow_memory
    async for item in source(log_id, after):
        yield item


async def _follow_memory(log_id: str, after: int) -> AsyncIterator[LogItem]:
    log = _memory_log(log_id)
    index = after + 1
    while True:
        while index < len(log.tokens):
            yield LogToken(index, log.tokens[index])
            index += 1
        if log.end is not None:
            yield log.end
            return
        async with asyncio.timeout(settings.LLM_TIMEOUT_SECONDS):
            await log.changed.wait()


async def _follow_redis(log_id: str, after: int) -> AsyncIterator[LogItem]:
    key, last_id = _log_key(log_id), "0-0"
    idle_deadline = time.monotonic() + settings.LLM_TIMEOUT_SECONDS
    client = get_redis()
    while True:
        reply = await client.xread({key: last_id}, block=BLOCK_MS, count=100)
        if not reply:
            if time.monotonic() > idle_deadline:
                raise TimeoutError(f"stream log {log_id} had nothing new")
            continue
        idle_deadline = time.monotonic() + settings.LLM_TIMEOUT_SECONDS
        for entry_id, fields in reply[0][1]:
            last_id = entry_id
            if b"e" in fields:
                yield LogEnd.from_dict(json.loads(fields[b"e"]))
                return
            first = int(fields[b"i"])
            for offset, text in enumerate(json.loads(fields[b"t"])):
                if first + offset > after:
                    yield LogToken(first + offset, text)


# --- In-flight claims ------------------------------------------------------------------


async def claim(cache_key: str, log_id: str) -> str | None:
    """Claim ``cache_key`` for ``log_id``: None when claimed, else the log of the request
    that holds it (a Redis failure answers None: the request generates on its own).

    A claim lasts at most ``LLM_TIMEOUT_SECONDS``: a claim left by a process that died
    then stops drawing requests to a log nobody writes soon (those already following it
    time out), and an answer generating longer is just not joined any more."""
    ttl = min(_ttl(), float(settings.LLM_TIMEOUT_SECONDS))
    if not settings.REDIS_URL:
        now = time.monotonic()
        held = _memory_claims.get(cache_key)
        if held is not None and held[1] > now:
            return held[0]
        _memory_claims[cache_key] = (log_id, now + ttl)
        return None
    try:
        async with redis_gate():
            held = await get_redis().set(
                _claim_key(cache_key), log_id, nx=True, get=True, px=max(1, round(ttl * 1000))
            )
    except redis.RedisError:
        logger.warning("in-flight claim: Redis unavailable, request runs on its own")
        return None
    return held.decode() if isinstance(held, bytes) else held


_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def release(cache_key: str, log_id: str) -> None:
    """Give up the claim on ``cache_key``, if ``log_id`` still holds it."""
    if not settings.REDIS_URL:
        held = _memory_claims.get(cache_key)
        if held is not None and held[0] == log_id:
            del _memory_claims[cache_key]
        return
    try:
        async with redis_gate():
            await get_redis().eval(_RELEASE_LUA, 1, _claim_key(cache_key), log_id)
    except redis.RedisError:  # the claim then lapses after STREAM_LOG_TTL_SECONDS
        logger.warning("in-flight claim: Redis unavailable, claim left to expire")
