"""The stream log: each running generation's tokens, replayable by any process.

A generation appends its tokens as they go out (:class:`LogWriter`, no I/O per token);
any request, in any process, reads them from the start or after a token index and
follows live until the end entry (:func:`follow`). With ``REDIS_URL`` each log is a
Redis Stream, appended in batches (:mod:`~chats.stream_log.redis_writer`), capped in
length and expiring ``STREAM_LOG_TTL_SECONDS`` after its last write. Without Redis the log
lives in this process's memory. The store is chosen once (:mod:`~chats.stream_log.store`).

A resumable stream's log also holds what its client was sent, chunk by chunk, in the
transport's own encoding (:meth:`LogWriter.wire`): a client that reconnects, to any
process, is sent the chunks after the last one it had (:func:`follow_wire`), then the live
ones. Such a log names the tenant and format it belongs to, marks itself as its chat's
active stream while it runs (:func:`active_stream`), and can be asked to stop from any
process (:func:`request_stop`: the writing process sees the request with its next flush,
within ``STOP_CHECK_SECONDS`` when nothing else is written).

In-flight claims (:func:`claim`): the first of identical cacheable requests claims its
cache key for its log; an identical request arriving while it runs finds the claim and
follows that log instead of generating the answer again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from django.conf import settings

from billing.store import ClaimOnMiss
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
from chats.stream_log.redis_writer import STOP_CHECK_SECONDS
from chats.stream_log.store import get_log_store
from chats.stream_log.writer import LogWriter, local_writer

__all__ = [
    "STOP_CHECK_SECONDS",
    "LogEnd",
    "LogItem",
    "LogToken",
    "LogTrimmed",
    "LogWriter",
    "WireChunk",
    "WireEnd",
    "WireHeader",
    "WireItem",
    "active_stream",
    "claim",
    "claim_on_miss",
    "follow",
    "follow_wire",
    "release",
    "request_stop",
    "wait_end",
    "wire_header",
    "wire_state",
]


def follow(log_id: str, after: int = -1) -> AsyncIterator[LogItem]:
    """The log's tokens with an index above ``after``, live until its end entry, then
    that entry. Raises TimeoutError when the log gets no entry for
    ``LLM_TIMEOUT_SECONDS`` (its writer died, or never started)."""
    return get_log_store().follow(log_id, after)


async def wire_header(log_id: str) -> WireHeader | None:
    """Whose the resumable stream ``log_id`` is; None if there is no such stream (never
    was, not resumable, or expired)."""
    return (await wire_state(log_id))[0]


async def wire_state(log_id: str) -> tuple[WireHeader | None, int | None]:
    """Whose the resumable stream ``log_id`` is (None: no such stream), and how many
    chunks it had if it has ended (None while it runs)."""
    return await get_log_store().wire_state(log_id)


def follow_wire(log_id: str, after: int = -1) -> AsyncIterator[WireItem]:
    """The chunks of a resumable stream after position ``after``, live until its end,
    then the end. Raises TimeoutError like :func:`follow`, and LogTrimmed when the chunks
    asked for are gone."""
    return get_log_store().follow_wire(log_id, after)


async def active_stream(tenant_id: int, stream_format: str, chat_ids: list[str]) -> str | None:
    """The log of the tenant's stream in ``stream_format`` running in the first of
    ``chat_ids`` that has one."""
    return await get_log_store().active_stream(tenant_id, stream_format, chat_ids)


async def request_stop(log_id: str) -> None:
    """Ask the stream ``log_id`` to end (stored ``cancelled``), whichever process runs it."""
    writer = local_writer(log_id)
    if writer is not None:
        writer.stop_requested()
    else:
        await get_log_store().request_stop(log_id)


async def claim(cache_key: str, log_id: str) -> str | None:
    """Claim ``cache_key`` for ``log_id``: None when claimed, else the log of the request
    that holds it (a Redis failure answers None: the request generates on its own).

    A claim lasts at most ``LLM_TIMEOUT_SECONDS``: a claim left by a process that died
    then stops drawing requests to a log nobody writes soon (those already following it
    time out), and an answer generating longer is just not joined any more."""
    return await get_log_store().claim(cache_key, log_id, _claim_ttl())


def claim_on_miss(cache_key: str, log_id: str) -> ClaimOnMiss | None:
    """:func:`claim`, for the response cache's lookup of ``cache_key`` to make when it
    misses, in the same round trip; None where claims are kept out of its reach (in this
    process's memory): then :func:`claim` after the lookup."""
    return get_log_store().claim_on_miss(cache_key, log_id, _claim_ttl())


def _claim_ttl() -> float:
    return min(float(settings.STREAM_LOG_TTL_SECONDS), float(settings.LLM_TIMEOUT_SECONDS))


async def release(cache_key: str, log_id: str) -> None:
    """Give up the claim on ``cache_key``, if ``log_id`` still holds it."""
    await get_log_store().release(cache_key, log_id)


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
