"""A stream log's writes to Redis, in batches: the tokens gathered over
``STREAM_LOG_FLUSH_MS`` (or ``STREAM_LOG_BATCH`` of them, whichever comes first) go out as
one entry of the log's Redis Stream, with the log's expiry, in one pipeline. Appending
does no I/O.

A wired log's flushes also keep its chat's active-stream key alive and look for a stop
request; one that writes nothing for ``STOP_CHECK_SECONDS`` still looks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson
import redis
from django.conf import settings
from redis.typing import EncodableT, FieldT

from chatproject.redis_multiplexed import Command, get_multiplexed
from chats.stream_log.entries import LogEnd, WireHeader
from chats.stream_log.redis_keys import DELETE_IF, active_key, log_key, stop_key, ttl_ms

if TYPE_CHECKING:
    from chats.stream_log.store import StopTarget

logger = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # a log's length cap (approximate trimming); entries hold batches
STOP_CHECK_SECONDS = 1.0  # how often an idle resumable log looks for a stop request

Entry = dict[FieldT, EncodableT]  # one entry's fields


class RedisSink:
    """One writer's entries, buffered: a timer started by the first token of a batch sends
    the batch, and one flush at a time goes out, so batches stay in order and grow while
    Redis answers."""

    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        # Read once: settings are looked up by name, too slow to do for each token.
        self._batch_size = settings.STREAM_LOG_BATCH
        self._flush_after = settings.STREAM_LOG_FLUSH_MS / 1000
        self._next_index = 0  # index of the first buffered token
        self._buffer: list[str] = []
        self._next_seq = 0  # position of the next chunk
        self._chunks: list[str] = []  # buffered chunks
        self._header: WireHeader | None = None
        self._header_sent = False
        self._target: StopTarget | None = None  # where a stop request goes, once wired
        self._end: LogEnd | None = None  # to be written
        self._wire_end: str | None = None  # to be written
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._draining: asyncio.Task[None] | None = None

    def wire(self, header: WireHeader, target: StopTarget) -> None:
        self._header, self._target = header, target
        # The header goes out with the first chunk, or within a flush interval if none
        # comes (a model thinking: a resume by chat may come before its first token).
        self._added(0)

    def append(self, text: str) -> None:
        self._buffer.append(text)
        self._added(len(self._buffer))

    def append_chunk(self, data: str) -> None:
        self._chunks.append(data)
        self._next_seq += 1
        if self._next_seq == 1 and not self._header_sent:
            # On the loop's next turn: after the client is sent the chunk (this write is
            # not on the first token's way), and soon, for a client that resumes.
            asyncio.get_running_loop().call_soon(self._kick)
        else:
            self._added(len(self._chunks))

    async def close(self, end: LogEnd) -> None:
        self._end = end
        await self._flush_now()

    async def close_wire(self, status: str) -> None:
        self._wire_end = status
        await self._flush_now()
        self._target = None  # nothing more to hear; and the writer, which holds this sink,
        # is then freed when its request ends, not by the garbage collector

    def _added(self, buffered: int) -> None:
        if buffered >= self._batch_size:
            self._kick()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._flush_after, self._kick)

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
            entries: list[Entry] = []
            header = None
            if self._header is not None and not self._header_sent:
                header, self._header_sent = self._header, True
                entries.append({"h": header.to_json()})
            data: Entry = {}
            if self._buffer:
                batch, self._buffer = self._buffer, []
                first, self._next_index = self._next_index, self._next_index + len(batch)
                data.update(i=first, t=orjson.dumps(batch))
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                data.update(w=self._next_seq - len(chunks), c=orjson.dumps(chunks))
            if data:
                entries.append(data)
            if self._end is not None:
                entries.append({"e": orjson.dumps(self._end.to_dict())})
                self._end = None
            wire_end, self._wire_end = self._wire_end, None
            if wire_end is not None:  # with how many chunks the stream had
                entries.append({"x": wire_end, "n": self._next_seq})
            await self._send(entries, header=header, last=wire_end is not None)
        self._watch_idle()

    async def _send(self, entries: list[Entry], *, header: WireHeader | None, last: bool) -> None:
        key, wired, target, ttl = log_key(self.log_id), self._header, self._target, ttl_ms()
        commands: list[Command] = [
            ("XADD", key, "MAXLEN", "~", MAX_ENTRIES, "*", *_flat(entry)) for entry in entries
        ]
        commands.append(("PEXPIRE", key, ttl))
        if wired is not None and wired.chat_id:
            active = active_key(wired.tenant_id, wired.format, wired.chat_id)
            if header is not None:
                commands.append(("SET", active, self.log_id, "PX", ttl))
            if last:
                commands.append(("EVAL", DELETE_IF.source, 1, active, self.log_id))
            elif header is None:
                commands.append(("PEXPIRE", active, ttl))
        if target is not None and not last:
            commands.append(("EXISTS", stop_key(self.log_id)))
        try:
            replies = await get_multiplexed().execute_many(commands)
        except redis.RedisError:  # followers then time out; the generation goes on
            logger.warning("stream log %s: Redis unavailable, entries lost", self.log_id)
            return
        if target is not None and not last and replies[-1]:
            target.stop_requested()

    def _watch_idle(self) -> None:
        """A resumable stream that writes nothing for a while still looks for a stop
        request (a model thinking, a tool running)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._target is None or not self._target.awaits_stop:
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(STOP_CHECK_SECONDS, self._check_stop)

    def _check_stop(self) -> None:
        self._idle_timer = None
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain(always=True))

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


def _flat(entry: Entry) -> list[EncodableT]:
    """An entry's fields and values, one after the other, as XADD takes them."""
    return [item for pair in entry.items() for item in pair]
