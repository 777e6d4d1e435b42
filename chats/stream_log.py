"""The stream log: each running generation's tokens, replayable by any process.

A generation appends its tokens as they go out (:class:`LogWriter`, no I/O per token);
any request, in any process, reads them from the start or after a token index and
follows live until the end entry (:func:`follow`). With ``REDIS_URL`` each log is a
Redis Stream, appended in batches: the tokens gathered over ``STREAM_LOG_FLUSH_MS`` (or
``STREAM_LOG_BATCH`` of them, whichever comes first) go out as one entry, XADD and
PEXPIRE in one pipeline. A log is capped in length and expires ``STREAM_LOG_TTL_SECONDS``
after its last write. Without Redis the log lives in this process's memory.

A resumable stream's log also holds what its client was sent, chunk by chunk, in the
transport's own encoding (:meth:`LogWriter.wire`): a client that reconnects, to any
process, is sent the chunks after the last one it had (:func:`follow_wire`), then the live
ones. Such a log names the tenant and format it belongs to, marks itself as its chat's
active stream while it runs (:func:`active_stream`), and can be asked to stop from any
process (:func:`request_stop`: the writing process sees the request with its next flush,
within a second when nothing else is written).

In-flight claims (:func:`claim`): the first of identical cacheable requests claims its
cache key for its log; an identical request arriving while it runs finds the claim and
follows that log instead of generating the answer again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from chatproject.redis import get_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "streams"
MAX_ENTRIES = 10_000  # a log's length cap (approximate trimming); entries hold batches
BLOCK_MS = 1000  # one blocking read's wait; the follower re-checks its idle deadline after
STOP_CHECK_SECONDS = 1.0  # how often an idle resumable log looks for a stop request


def _log_key(log_id: str) -> str:
    return f"{KEY_PREFIX}:log:{log_id}"


def _claim_key(cache_key: str) -> str:
    return f"{KEY_PREFIX}:inflight:{cache_key}"


def _active_key(tenant_id: int, stream_format: str, chat_id: str) -> str:
    return f"{KEY_PREFIX}:active:{tenant_id}:{stream_format}:{chat_id}"


def _stop_key(log_id: str) -> str:
    return f"{KEY_PREFIX}:stop:{log_id}"


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


@dataclass(frozen=True, slots=True)
class WireHeader:
    """Whose a resumable stream is: only its tenant may resume it, in its own format."""

    format: str  # the transport that encoded its chunks
    tenant_id: int
    chat_id: str | None = None  # its chat, whose active stream it is while it runs

    def to_json(self) -> str:
        return json.dumps({"f": self.format, "t": self.tenant_id, "c": self.chat_id})

    @classmethod
    def from_json(cls, raw: str | bytes) -> WireHeader:
        data = json.loads(raw)
        return cls(str(data["f"]), int(data["t"]), data.get("c"))


@dataclass(frozen=True, slots=True)
class WireChunk:
    seq: int  # its position in the stream, from 0 (the SSE event id)
    data: str


@dataclass(frozen=True, slots=True)
class WireEnd:
    status: str  # complete, failed or cancelled


WireItem = WireChunk | WireEnd


class LogTrimmed(Exception):
    """The chunks a reader asked for are no longer in the log (trimmed, or expired)."""


# --- In memory (no Redis): one process -------------------------------------------------


MEMORY_MAX_ITEMS = 100_000  # tokens (and chunks) an in-memory log keeps, the latest


@dataclass
class _MemoryLog:
    tokens: list[str] = field(default_factory=list)
    end: LogEnd | None = None
    header: WireHeader | None = None
    chunks: list[str] = field(default_factory=list)
    chunks_from: int = 0  # position of chunks[0]: the ones before were trimmed
    wire_end: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def add_chunk(self, data: str) -> None:
        self.chunks.append(data)
        if len(self.chunks) > MEMORY_MAX_ITEMS:  # the cap Redis's MAXLEN is to its logs
            half = MEMORY_MAX_ITEMS // 2
            del self.chunks[:half]
            self.chunks_from += half
        self.notify()

    @property
    def chunk_count(self) -> int:
        return self.chunks_from + len(self.chunks)


_memory_logs: dict[str, _MemoryLog] = {}
_memory_claims: dict[str, tuple[str, float]] = {}  # claim key → (log id, expires at)
_memory_active: dict[str, str] = {}  # active key → log id

# This process's resumable streams, by log id: how a stop request reaches them.
_local_writers: dict[str, LogWriter] = {}


def _memory_log(log_id: str) -> _MemoryLog:
    log = _memory_logs.get(log_id)
    if log is None:
        log = _memory_logs[log_id] = _MemoryLog()
    return log


def _ttl() -> float:
    return float(settings.STREAM_LOG_TTL_SECONDS)


def _ttl_ms() -> int:
    return max(1, round(_ttl() * 1000))


# --- Writing ---------------------------------------------------------------------------

_DELETE_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LogWriter:
    """Appends one generation's tokens to its log; :meth:`close` writes the end entry.

    ``append`` only buffers (in memory it appends to the process's log directly); with
    Redis a timer started by the first token of a batch sends the batch, and one flush at a
    time goes out, so batches stay in order and grow while Redis answers.

    A wired log (:meth:`wire`) also takes the chunks its client was sent
    (:meth:`append_chunk`) and stays open after the tokens' end until :meth:`close_wire`.
    """

    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        self._next_index = 0  # index of the first buffered token
        self._buffer: list[str] = []
        self._next_seq = 0  # position of the next chunk
        self._chunks: list[str] = []  # buffered chunks
        self._header: WireHeader | None = None
        self._header_sent = False
        self._end: LogEnd | None = None  # to be written
        self._wire_end: str | None = None  # to be written
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._draining: asyncio.Task | None = None
        self._text_closed = False
        self._closed = False
        self._on_stop: Callable[[], None] | None = None
        self._memory = None if settings.REDIS_URL else _memory_log(log_id)

    @property
    def wired(self) -> bool:
        return self._header is not None

    def wire(self, header: WireHeader, on_stop: Callable[[], None]) -> None:
        """Keep the chunks sent to the client, for clients that resume; ``on_stop`` is
        called (once) when :func:`request_stop` asks for this stream to end."""
        if self._header is not None or self._closed:
            return
        self._header, self._on_stop = header, on_stop
        _local_writers[self.log_id] = self
        if self._memory is not None:
            self._memory.header = header
            if header.chat_id:
                key = _active_key(header.tenant_id, header.format, header.chat_id)
                _memory_active[key] = self.log_id
            self._memory.notify()
            return
        self._kick()  # the header goes out now: a resume may come before the first token

    def append(self, text: str) -> None:
        if self._text_closed:
            return
        if self._memory is not None:
            if len(self._memory.tokens) < MEMORY_MAX_ITEMS:  # joiners of longer ones time out
                self._memory.tokens.append(text)
            self._memory.notify()
            return
        self._buffer.append(text)
        self._added(len(self._buffer))

    def append_chunk(self, data: str) -> int:
        """Keep one chunk as it was sent; its position in the stream (its event id)."""
        seq = self._next_seq
        self._next_seq += 1
        if self._closed:
            return seq
        if self._memory is not None:
            self._memory.add_chunk(data)
            return seq
        self._chunks.append(data)
        self._added(len(self._chunks))
        return seq

    def stop_requested(self) -> None:
        """A stop request for this stream reached this process."""
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()

    def _added(self, buffered: int) -> None:
        if buffered >= settings.STREAM_LOG_BATCH:
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

    def _pending(self) -> bool:
        return bool(
            self._buffer
            or self._chunks
            or self._end is not None
            or self._wire_end is not None
            or (self._header is not None and not self._header_sent)
        )

    async def _drain(self, *, always: bool = False) -> None:
        while self._pending() or always:
            always = False
            entries: list[dict[str, Any]] = []
            header = None
            if self._header is not None and not self._header_sent:
                header, self._header_sent = self._header, True
                entries.append({"h": header.to_json()})
            data: dict[str, Any] = {}
            if self._buffer:
                batch, self._buffer = self._buffer, []
                first, self._next_index = self._next_index, self._next_index + len(batch)
                data.update(i=first, t=json.dumps(batch, ensure_ascii=False))
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                data.update(w=self._next_seq - len(chunks), c=json.dumps(chunks))
            if data:
                entries.append(data)
            if self._end is not None:
                entries.append({"e": json.dumps(self._end.to_dict())})
                self._end = None
            wire_end, self._wire_end = self._wire_end, None
            if wire_end is not None:  # with how many chunks the stream had
                entries.append({"x": wire_end, "n": self._next_seq})
            await self._send(entries, header=header, last=wire_end is not None)
        self._watch_idle()

    async def _send(
        self, entries: list[dict[str, Any]], *, header: WireHeader | None, last: bool
    ) -> None:
        key = _log_key(self.log_id)
        wired = self._header
        try:
            async with get_redis().pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(key, entry, maxlen=MAX_ENTRIES, approximate=True)
                pipe.pexpire(key, _ttl_ms())
                if wired is not None and wired.chat_id:
                    active = _active_key(wired.tenant_id, wired.format, wired.chat_id)
                    if header is not None:
                        pipe.set(active, self.log_id, px=_ttl_ms())
                    if last:
                        pipe.eval(_DELETE_IF_LUA, 1, active, self.log_id)
                    elif header is None:
                        pipe.pexpire(active, _ttl_ms())
                if wired is not None and not last:
                    pipe.exists(_stop_key(self.log_id))
                replies = await pipe.execute()
        except redis.RedisError:  # followers then time out; the generation goes on
            logger.warning("stream log %s: Redis unavailable, entries lost", self.log_id)
            return
        if wired is not None and not last and replies[-1]:
            self.stop_requested()

    def _watch_idle(self) -> None:
        """A resumable stream that writes nothing for a while still looks for a stop
        request (a model thinking, a tool running)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._header is None or self._closed or self._on_stop is None:
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(STOP_CHECK_SECONDS, self._check_stop)

    def _check_stop(self) -> None:
        self._idle_timer = None
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain(always=True))

    async def close(self, end: LogEnd) -> None:
        """Write what is buffered and the end entry; the log expires a while after (a
        wired one once :meth:`close_wire` is called too)."""
        if self._text_closed:
            return
        self._text_closed = True
        if self._memory is not None:
            self._memory.end = end
            self._memory.notify()
            if not self.wired:
                self._close_memory()
            return
        self._end = end
        if not self.wired:
            self._closed = True
        await self._flush_now()

    async def close_wire(self, status: str) -> None:
        """The stream's last chunk went out: write the stream's end, and stop being the
        chat's active stream."""
        if self._closed or not self.wired:
            return
        self._closed = True
        _local_writers.pop(self.log_id, None)
        self._on_stop = None
        if self._memory is not None:
            self._memory.wire_end = status
            header = self._header
            if header is not None and header.chat_id:
                key = _active_key(header.tenant_id, header.format, header.chat_id)
                if _memory_active.get(key) == self.log_id:
                    del _memory_active[key]
            self._close_memory()
            return
        self._wire_end = status
        await self._flush_now()

    def _close_memory(self) -> None:
        assert self._memory is not None
        self._closed = True
        _local_writers.pop(self.log_id, None)
        self._memory.notify()
        asyncio.get_running_loop().call_later(_ttl(), _memory_logs.pop, self.log_id, None)

    async def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        while True:  # one flush at a time, so entries go out in order
            if self._draining is None or self._draining.done():
                if not self._pending():
                    return
                self._draining = asyncio.ensure_future(self._drain())
            await asyncio.shield(self._draining)


# --- Reading ---------------------------------------------------------------------------


async def follow(log_id: str, after: int = -1) -> AsyncIterator[LogItem]:
    """The log's tokens with an index above ``after``, live until its end entry, then
    that entry. Raises TimeoutError when the log gets no entry for
    ``LLM_TIMEOUT_SECONDS`` (its writer died, or never started)."""
    if not settings.REDIS_URL:
        async for item in _follow_memory(log_id, after):
            yield item
        return
    async for fields in _entries_redis(log_id, until=b"e"):
        if b"e" in fields:
            yield LogEnd.from_dict(json.loads(fields[b"e"]))
            return
        if b"t" not in fields:
            continue
        first = int(fields[b"i"])
        for offset, text in enumerate(json.loads(fields[b"t"])):
            if first + offset > after:
                yield LogToken(first + offset, text)


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


async def _entries_redis(log_id: str, *, until: bytes) -> AsyncIterator[dict[bytes, bytes]]:
    """The log's entries from its first, live until one holding ``until``."""
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
            yield fields
            if until in fields:
                return


async def wire_header(log_id: str) -> WireHeader | None:
    """Whose the resumable stream ``log_id`` is; None if there is no such stream (never
    was, not resumable, or expired)."""
    return (await wire_state(log_id))[0]


async def wire_state(log_id: str) -> tuple[WireHeader | None, int | None]:
    """Whose the resumable stream ``log_id`` is (None: no such stream), and how many
    chunks it had if it has ended (None while it runs)."""
    if not settings.REDIS_URL:
        log = _memory_logs.get(log_id)
        if log is None or log.header is None:
            return None, None
        return log.header, log.chunk_count if log.wire_end is not None else None
    async with get_redis().pipeline(transaction=False) as pipe:
        pipe.xrange(_log_key(log_id), count=1)
        pipe.xrevrange(_log_key(log_id), count=1)
        first, last = await pipe.execute()
    if not first or b"h" not in first[0][1]:
        return None, None
    header = WireHeader.from_json(first[0][1][b"h"])
    ended = last[0][1] if last and b"x" in last[0][1] else None
    return header, int(ended[b"n"]) if ended is not None else None


async def follow_wire(log_id: str, after: int = -1) -> AsyncIterator[WireItem]:
    """The chunks of a resumable stream after position ``after``, live until its end,
    then the end. Raises TimeoutError like :func:`follow`, and LogTrimmed when the chunks
    asked for are gone."""
    if not settings.REDIS_URL:
        async for item in _follow_wire_memory(log_id, after):
            yield item
        return
    expected = 0
    async for fields in _entries_redis(log_id, until=b"x"):
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


async def _follow_wire_memory(log_id: str, after: int) -> AsyncIterator[WireItem]:
    log = _memory_logs.get(log_id)
    if log is None:
        raise LogTrimmed(f"stream {log_id} is gone")
    seq = after + 1
    while True:
        if seq < log.chunks_from:
            raise LogTrimmed(f"stream {log_id}: chunks before {log.chunks_from} are gone")
        while seq < log.chunk_count:
            yield WireChunk(seq, log.chunks[seq - log.chunks_from])
            seq += 1
        if log.wire_end is not None:
            yield WireEnd(log.wire_end)
            return
        async with asyncio.timeout(settings.LLM_TIMEOUT_SECONDS):
            await log.changed.wait()


# --- Active streams and stop requests --------------------------------------------------


async def active_stream(tenant_id: int, stream_format: str, chat_ids: list[str]) -> str | None:
    """The log of the tenant's stream in ``stream_format`` running in the first of
    ``chat_ids`` that has one."""
    keys = [_active_key(tenant_id, stream_format, chat_id) for chat_id in chat_ids]
    if not settings.REDIS_URL:
        return next((_memory_active[key] for key in keys if key in _memory_active), None)
    values = await get_redis().mget(keys)
    found = next((value for value in values if value), None)
    return found.decode() if isinstance(found, bytes) else found


async def request_stop(log_id: str) -> None:
    """Ask the stream ``log_id`` to end (stored ``cancelled``), whichever process runs it."""
    writer = _local_writers.get(log_id)
    if writer is not None:
        writer.stop_requested()
        return
    if settings.REDIS_URL:
        await get_redis().set(_stop_key(log_id), b"1", px=_ttl_ms())


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
        held = await get_redis().set(
            _claim_key(cache_key), log_id, nx=True, get=True, px=max(1, round(ttl * 1000))
        )
    except redis.RedisError:
        logger.warning("in-flight claim: Redis unavailable, request runs on its own")
        return None
    return held.decode() if isinstance(held, bytes) else held


async def release(cache_key: str, log_id: str) -> None:
    """Give up the claim on ``cache_key``, if ``log_id`` still holds it."""
    if not settings.REDIS_URL:
        held = _memory_claims.get(cache_key)
        if held is not None and held[0] == log_id:
            del _memory_claims[cache_key]
        return
    try:
        await get_redis().eval(_DELETE_IF_LUA, 1, _claim_key(cache_key), log_id)
    except redis.RedisError:  # the claim then lapses after STREAM_LOG_TTL_SECONDS
        logger.warning("in-flight claim: Redis unavailable, claim left to expire")


async def wait_end(log_id: str, timeout: float) -> str | None:
    """The status a resumable stream ended with, once it has (None if not within
    ``timeout`` seconds, or if it is gone)."""
    try:
        async with asyncio.timeout(timeout):
            async for item in follow_wire(log_id, after=2**62):
                if isinstance(item, WireEnd):
                    return item.status
    except (TimeoutError, LogTrimmed):
        pass
    return None
