"""A streaming response over chunks produced in a task of their own: keep-alive
comments while the producer is silent, the producer cancelled and awaited when the
client disconnects (or left running, for a stream clients can resume)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

from django.conf import settings
from django.http import StreamingHttpResponse

from chats.engine.idle_deadline import IdleDeadline
from chats.transports.sse import KEEPALIVE

logger = logging.getLogger(__name__)

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


# Chunks a producer may run ahead of its response: what is ready when the response comes
# back for more goes out in one write (tokens arriving together from the upstream); few
# enough that a client that stops reading holds up the engine soon.
QUEUED_CHUNKS = 32


class Producer:
    """``chunks``, produced in a task of their own and handed over as they are ready.

    The engine's generator (and the idle timeout it keeps with ``asyncio.timeout``) must
    stay in one task while the response waits with a timeout of its own, for keep-alives.
    :meth:`aclose` cancels the producer and awaits it, so the engine stores a cancelled
    exchange and settles its credits before the request is over. A producer nobody
    consumes (the client left between the view and the response) is cancelled when the
    task that started it ends, rather than left waiting with a credit hold.

    With ``keep_running`` (a stream clients can resume) the producer is detached instead
    of cancelled, in both cases: it produces to the end with nobody reading (its chunks
    are kept in the stream log for a client that resumes).
    """

    def __init__(self, chunks: AsyncGenerator[bytes, None], *, keep_running: bool = False) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUED_CHUNKS)
        self.keep_running = keep_running
        self.detached = False
        self.task = asyncio.create_task(self._produce(chunks))
        owner = asyncio.current_task()
        if owner is not None:
            owner.add_done_callback(lambda _: self._owner_done())

    async def _produce(self, chunks: AsyncGenerator[bytes, None]) -> None:
        try:
            queue = self.queue
            async with contextlib.aclosing(chunks) as source:
                async for chunk in source:
                    if self.detached:
                        continue
                    if queue.full():
                        await queue.put(chunk)  # the response is behind: wait for room
                    else:
                        queue.put_nowait(chunk)  # no coroutine made for every chunk
        except Exception as exc:
            if self.detached:
                logger.exception("a stream whose client left failed")
            else:
                await self.queue.put(_Failed(exc))
            return
        if not self.detached:
            await self.queue.put(_END)

    def _owner_done(self) -> None:
        if self.keep_running:
            self.detach()
        else:
            self.task.cancel()

    def detach(self) -> None:
        """Nobody reads any more: produce to the end without handing chunks over."""
        if self.detached or self.task.done():
            return
        self.detached = True
        while not self.queue.empty():  # a producer waiting to put goes on
            self.queue.get_nowait()
        _detached.add(self.task)  # asyncio keeps only weak references to tasks
        self.task.add_done_callback(_detached.discard)

    async def aclose(self) -> None:
        if self.keep_running:
            self.detach()
            return
        if not self.task.done():
            self.task.cancel()
        # asyncio.wait never cancels what it waits for: a second cancellation of this task
        # cannot interrupt the engine's finalisation (which is shielded as well).
        await asyncio.wait({self.task})
        if not self.task.cancelled():
            self.task.exception()  # retrieved: errors were delivered through the queue


_detached: set[asyncio.Task] = set()  # producers whose client left, running to the end


async def with_keepalive(
    chunks: AsyncGenerator[bytes, None] | Producer, interval: float
) -> AsyncGenerator[bytes, None]:
    """``chunks``, plus a keep-alive comment whenever none came for ``interval`` seconds.

    When the client disconnects, Django cancels the task iterating this generator; the
    producer is cancelled in turn and awaited (:meth:`Producer.aclose`).
    """
    producer = chunks if isinstance(chunks, Producer) else Producer(chunks)
    # One timer for the stream's keep-alives, not one set and cancelled for every chunk.
    deadline = IdleDeadline() if interval > 0 else None
    try:
        if producer.queue.empty():
            yield b""  # sends the response headers now, not with the first chunk
        while True:
            if deadline is not None:
                deadline.waiting(interval)
            try:
                item = await producer.queue.get()
            except asyncio.CancelledError:
                if deadline is None or not deadline.timed_out():
                    raise
                item = None  # nothing came for `interval` seconds
            finally:
                if deadline is not None:
                    deadline.done()
            if item is None:
                yield KEEPALIVE
                continue
            ready: list[bytes] = []  # what else is ready goes out in the same write
            while isinstance(item, bytes):
                ready.append(item)
                if producer.queue.empty():
                    break
                item = producer.queue.get_nowait()
            if ready:
                yield b"".join(ready)
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
    finally:
        if deadline is not None:
            deadline.close()
        await producer.aclose()


class ByteStreamResponse(StreamingHttpResponse):
    """A streaming response over an async generator of bytes, sent as it yields them.
    Django's own wraps the generator in two more (to make bytes of what is not), which
    every chunk would pass through."""

    def __init__(self, chunks: AsyncIterator[bytes], **kwargs) -> None:
        super().__init__(chunks, **kwargs)
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


def event_stream(
    chunks: AsyncGenerator[bytes, None] | Producer,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = "text/event-stream",
) -> StreamingHttpResponse:
    """A streaming response over ``chunks``: nothing buffered, keep-alives when idle."""
    response = ByteStreamResponse(
        with_keepalive(chunks, settings.SSE_KEEPALIVE_SECONDS), content_type=content_type
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def in_background(coroutine) -> asyncio.Future:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


_background: set[asyncio.Future] = set()
