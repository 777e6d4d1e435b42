"""The stream logs in this process's memory (no Redis): one process writes and reads them.

A writer appends to its log directly (no batching: nothing to save a round trip on), and
each change wakes the log's followers. A log is dropped ``STREAM_LOG_TTL_SECONDS`` after
it closed; a stop request reaches only this process's writers, which the caller finds
itself (:func:`chats.stream_log.request_stop`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

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

if TYPE_CHECKING:
    from chats.stream_log.store import StopTarget

MAX_ITEMS = 100_000  # tokens (and chunks) a log keeps, the latest

ActiveKey = tuple[int, str, str]  # tenant, stream format, chat


@dataclass
class _Log:
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
        if len(self.chunks) > MAX_ITEMS:  # the cap Redis's MAXLEN is to its logs
            half = MAX_ITEMS // 2
            del self.chunks[:half]
            self.chunks_from += half
        self.notify()

    @property
    def chunk_count(self) -> int:
        return self.chunks_from + len(self.chunks)


class MemorySink:
    """One writer's log, written as it goes."""

    def __init__(self, store: MemoryLogStore, log_id: str) -> None:
        self._store, self._log_id = store, log_id
        self._log = store.log(log_id)
        self._wired = False
        self._active: ActiveKey | None = None  # the chat whose active stream this is

    def wire(self, header: WireHeader, target: StopTarget) -> None:
        self._log.header, self._wired = header, True
        if header.chat_id:
            self._active = (header.tenant_id, header.format, header.chat_id)
            self._store.active[self._active] = self._log_id
        self._log.notify()

    def append(self, text: str) -> None:
        if len(self._log.tokens) < MAX_ITEMS:  # joiners of longer ones time out
            self._log.tokens.append(text)
        self._log.notify()

    def append_chunk(self, data: str) -> None:
        self._log.add_chunk(data)

    async def close(self, end: LogEnd) -> None:
        self._log.end = end
        self._log.notify()
        if not self._wired:  # a wired log waits for its stream's end
            self._expire()

    async def close_wire(self, status: str) -> None:
        self._log.wire_end = status
        if self._active is not None and self._store.active.get(self._active) == self._log_id:
            del self._store.active[self._active]
        self._expire()

    def _expire(self) -> None:
        self._log.notify()
        ttl = float(settings.STREAM_LOG_TTL_SECONDS)
        asyncio.get_running_loop().call_later(ttl, self._store.logs.pop, self._log_id, None)


class MemoryLogStore:
    def __init__(self) -> None:
        self.logs: dict[str, _Log] = {}
        self.active: dict[ActiveKey, str] = {}  # chat → the log of its active stream
        self._claims: dict[str, tuple[str, float]] = {}  # cache key → (log id, expires at)

    def log(self, log_id: str) -> _Log:
        log = self.logs.get(log_id)
        if log is None:
            log = self.logs[log_id] = _Log()
        return log

    def sink(self, log_id: str) -> MemorySink:
        return MemorySink(self, log_id)

    async def follow(self, log_id: str, after: int) -> AsyncIterator[LogItem]:
        log = self.log(log_id)  # a follower may come before its writer
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

    async def wire_state(self, log_id: str) -> tuple[WireHeader | None, int | None]:
        log = self.logs.get(log_id)
        if log is None or log.header is None:
            return None, None
        return log.header, log.chunk_count if log.wire_end is not None else None

    async def follow_wire(self, log_id: str, after: int) -> AsyncIterator[WireItem]:
        log = self.logs.get(log_id)
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

    async def active_stream(
        self, tenant_id: int, stream_format: str, chat_ids: list[str]
    ) -> str | None:
        keys = [(tenant_id, stream_format, chat_id) for chat_id in chat_ids]
        return next((self.active[key] for key in keys if key in self.active), None)

    async def request_stop(self, log_id: str) -> None:
        """Nothing to do: every writer of these logs is in this process."""

    async def claim(self, cache_key: str, log_id: str, ttl: float) -> str | None:
        now = time.monotonic()
        held = self._claims.get(cache_key)
        if held is not None and held[1] > now:
            return held[0]
        self._claims[cache_key] = (log_id, now + ttl)
        return None

    def claim_on_miss(self, cache_key: str, log_id: str, ttl: float) -> None:
        return None  # the billing store's lookup cannot reach these claims

    async def release(self, cache_key: str, log_id: str) -> None:
        held = self._claims.get(cache_key)
        if held is not None and held[0] == log_id:
            del self._claims[cache_key]
