"""Where the stream logs live: one interface, :class:`LogStore`, two implementations
chosen once per configuration (:func:`get_log_store`): Redis with ``REDIS_URL``
(:mod:`~chats.stream_log.redis_store`, shared by every server process), else this
process's memory (:mod:`~chats.stream_log.memory_store`).

A store reads the logs and keeps claims; each writer writes through a :class:`LogSink`
the store gives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from billing.store import ClaimOnMiss
from chatproject.backends import RedisOrMemory
from chats.stream_log.entries import LogEnd, LogItem, WireHeader, WireItem
from chats.stream_log.memory_store import MemoryLogStore
from chats.stream_log.redis_store import RedisLogStore


class StopTarget(Protocol):
    """The writer of a resumable stream, as its sink sees it."""

    @property
    def awaits_stop(self) -> bool:
        """A stop request would still be heard (none came yet, the stream runs)."""

    def stop_requested(self) -> None: ...


class LogSink(Protocol):
    """Where one :class:`~chats.stream_log.LogWriter`'s entries go, in their order. The
    writer calls each method only while it applies (no token after the end, no chunk
    after the stream's end, ``wire`` at most once and before ``close``)."""

    def wire(self, header: WireHeader, target: StopTarget) -> None:
        """The log is a resumable stream's: keep its header, make it its chat's active
        stream, and tell ``target`` of a stop request that comes through the store."""

    def append(self, text: str) -> None:
        """One token; on the hot path, so no I/O of its own."""

    def append_chunk(self, data: str) -> None:
        """The stream's next chunk, as its client was sent it."""

    async def close(self, end: LogEnd) -> None:
        """The tokens' end: write what is buffered and the end entry."""

    async def close_wire(self, status: str) -> None:
        """The stream's end: write it, and stop being the chat's active stream."""


class LogStore(Protocol):
    def sink(self, log_id: str) -> LogSink: ...

    def follow(self, log_id: str, after: int) -> AsyncIterator[LogItem]: ...

    async def wire_state(self, log_id: str) -> tuple[WireHeader | None, int | None]: ...

    def follow_wire(self, log_id: str, after: int) -> AsyncIterator[WireItem]: ...

    async def active_stream(
        self, tenant_id: int, stream_format: str, chat_ids: list[str]
    ) -> str | None: ...

    async def request_stop(self, log_id: str) -> None:
        """Ask the writer of ``log_id`` in another process to stop."""

    async def claim(self, cache_key: str, log_id: str, ttl: float) -> str | None:
        """Claim ``cache_key`` for ``log_id`` for ``ttl`` seconds: None when claimed, else
        the log that holds it."""

    def claim_on_miss(self, cache_key: str, log_id: str, ttl: float) -> ClaimOnMiss | None:
        """:meth:`claim`, as the billing store's lookup makes it (None if it cannot)."""

    async def release(self, cache_key: str, log_id: str) -> None:
        """Give up the claim on ``cache_key`` if ``log_id`` holds it."""


_stores: RedisOrMemory[RedisLogStore, MemoryLogStore] = RedisOrMemory(
    RedisLogStore, MemoryLogStore()
)


def get_log_store() -> LogStore:
    """Redis when ``REDIS_URL`` is set, else this process's memory."""
    return _stores.get()
