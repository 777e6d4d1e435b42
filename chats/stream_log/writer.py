"""Writing a stream log: :class:`LogWriter`, one per generation, through its store's sink."""

from __future__ import annotations

from collections.abc import Callable

from chats.stream_log.entries import LogEnd, WireHeader
from chats.stream_log.store import get_log_store

# This process's resumable streams, by log id: how a stop request reaches them.
_local_writers: dict[str, LogWriter] = {}


class LogWriter:
    """Appends one generation's tokens to its log; :meth:`close` writes the end entry.

    ``append`` does no I/O: with Redis the tokens go out in batches
    (:mod:`~chats.stream_log.redis_writer`), in memory straight into the log.

    A wired log (:meth:`wire`) also takes the chunks its client was sent
    (:meth:`append_chunk`) and stays open after the tokens' end until :meth:`close_wire`.
    """

    def __init__(self, log_id: str) -> None:
        self.log_id = log_id
        self._sink = get_log_store().sink(log_id)
        self._header: WireHeader | None = None
        self._on_stop: Callable[[], None] | None = None
        self._next_seq = 0  # position of the next chunk
        self._text_closed = False
        self._closed = False

    @property
    def wired(self) -> bool:
        return self._header is not None

    @property
    def awaits_stop(self) -> bool:
        return self._on_stop is not None

    def wire(self, header: WireHeader, on_stop: Callable[[], None]) -> None:
        """Keep the chunks sent to the client, for clients that resume; ``on_stop`` is
        called (once) when :func:`~chats.stream_log.request_stop` asks for this stream to
        end."""
        if self._header is not None or self._closed:
            return
        self._header, self._on_stop = header, on_stop
        _local_writers[self.log_id] = self
        self._sink.wire(header, self)

    def append(self, text: str) -> None:
        if not self._text_closed:
            self._sink.append(text)

    def append_chunk(self, data: str) -> int:
        """Keep one chunk as it was sent; its position in the stream (its event id)."""
        seq = self._next_seq
        self._next_seq += 1
        if not self._closed:
            self._sink.append_chunk(data)
        return seq

    def stop_requested(self) -> None:
        """A stop request for this stream reached this process."""
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            on_stop()

    async def close(self, end: LogEnd) -> None:
        """Write what is buffered and the end entry; the log expires a while after (a
        wired one once :meth:`close_wire` is called too)."""
        if self._text_closed:
            return
        self._text_closed = True
        if not self.wired:
            self._closed = True
        await self._sink.close(end)

    async def close_wire(self, status: str) -> None:
        """The stream's last chunk went out: write the stream's end, and stop being the
        chat's active stream."""
        if self._closed or not self.wired:
            return
        self._closed = True
        _local_writers.pop(self.log_id, None)
        self._on_stop = None
        await self._sink.close_wire(status)


def local_writer(log_id: str) -> LogWriter | None:
    """The writer of ``log_id`` if it is a resumable stream running in this process."""
    return _local_writers.get(log_id)
