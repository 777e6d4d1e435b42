"""A generation as an HTTP answer: its events encoded and streamed (kept in the stream
log when clients can resume it, an HTTP error when it fails before its first event), or
run to its end for an answer sent whole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping

from django.conf import settings
from django.http import HttpResponse
from django.http.response import HttpResponseBase

from chats.engine import ErrorEvent, Event, FinishedEvent, Generation
from chats.stream_log import LogWriter, WireHeader
from chats.transports.streaming import Producer, event_stream, in_background

# Encoders are async generators, so the stream's producer can close them.
Encoder = Callable[[AsyncIterator[Event]], AsyncGenerator[bytes, None]]


class GenerationStream(Producer):
    """A generation's events, encoded for the wire by ``encode``, produced from the start.

    The engine's generator runs in the producer's task from the first event to the last
    and is closed there (so the exchange is finalised however the stream ends). The first
    event is published on :attr:`first` before ``encode`` sees it, so a view can wait for
    it and still choose the status line (:func:`generation_response`).

    With ``log`` (a wired stream log, see :func:`resumable_log`) every chunk is kept there
    and sent with its position as the SSE event ``id``, and the stream runs to its end
    when the client leaves.
    """

    def __init__(
        self, generation: Generation, encode: Encoder, *, log: LogWriter | None = None
    ) -> None:
        self.first: asyncio.Future[Event | None] = asyncio.get_running_loop().create_future()
        self.log = log
        super().__init__(self._encoded(generation, encode), keep_running=log is not None)

    async def _encoded(
        self, generation: Generation, encode: Encoder
    ) -> AsyncGenerator[bytes, None]:
        log = self.log
        try:
            async with events_of(generation) as events:
                rest = aiter(events)
                first = await anext(rest, None)
                if not self.first.done():  # cancelled: the view stopped waiting for it
                    self.first.set_result(first)
                if first is None:
                    return
                async with contextlib.aclosing(encode(_FirstThenRest(first, rest))) as chunks:
                    async for chunk in chunks:
                        if log is not None:
                            seq = log.append_chunk(chunk.decode())
                            chunk = b"id: %d\n%b" % (seq, chunk)
                        yield chunk
        finally:
            if not self.first.done():
                self.first.set_result(None)
            if log is not None:
                in_background(log.close_wire(_wire_status(generation.last_event)))

    async def first_event(self, timeout: float) -> Event | None:
        """The engine's first event, if it comes within ``timeout`` seconds (no limit if
        ``timeout`` is 0); None otherwise. The stream is closed if the caller is cancelled."""
        try:
            # Awaited directly (the view is its only reader, so a timeout may cancel it):
            # the view runs on the loop's next turn after it is set.
            async with asyncio.timeout(timeout if timeout > 0 else None):
                return await self.first
        except TimeoutError:
            return None
        except BaseException:
            await self.aclose()
            raise


class _FirstThenRest:
    """The first event, then the rest as the engine yields them (no generator between: a
    layer costs every token a resumption).

    When the encoder asks for the second event, the first one's chunks are queued and the
    view waiting on `first` is woken: the producer lets the view send them before it reads
    on (it would read whatever the upstream already sent, and finalise a short answer,
    without pausing)."""

    def __init__(self, first: Event, rest: AsyncIterator[Event]) -> None:
        self._first: Event | None = first
        self._rest = rest
        self._after_first = False

    def __aiter__(self) -> _FirstThenRest:
        return self

    def __anext__(self) -> Awaitable[Event]:
        if self._first is not None:
            first, self._first = self._first, None
            return _ready(first)
        if not self._after_first:
            self._after_first = True
            return self._second()
        return self._rest.__anext__()

    async def _second(self) -> Event:
        await asyncio.sleep(0)
        return await self._rest.__anext__()


async def _ready(event: Event) -> Event:
    return event


def _wire_status(last: Event | None) -> str:
    """How a stream ended, from its last event."""
    if isinstance(last, FinishedEvent):
        return last.status
    return "failed" if isinstance(last, ErrorEvent) else "cancelled"


def resumable_log(generation: Generation, stream_format: str) -> LogWriter | None:
    """The generation's stream log, wired to keep what its client is sent in
    ``stream_format`` so the client can resume (None when streams are not resumable, or
    for an Idempotency-Key replay: it is the first answer again, under that answer's id)."""
    if not settings.STREAM_RESUME or generation.replayed:
        return None
    log = generation.log
    if log is None:  # a cached or joined answer: the log holds its chunks only
        log = generation.log = LogWriter(generation.message_id.hex)
    chat = generation.request.chat
    header = WireHeader(stream_format, generation.request.tenant.pk, str(chat.pk) if chat else None)
    log.wire(header, on_stop=generation.stop)
    return log


async def generation_response(
    generation: Generation,
    encode: Encoder,
    *,
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
    content_type: str = "text/event-stream",
    error_first: Callable[[ErrorEvent], HttpResponse] | None = None,
    resumable: str | None = None,
) -> HttpResponseBase:
    """The streaming response of a generation, its events encoded by ``encode``.

    With ``resumable`` (the stream's format) the stream can be resumed: its chunks carry
    ids and are kept in the stream log, and it runs to the end when the client leaves.

    With ``error_first``, the status line waits for the engine's first event (at most
    ``SSE_KEEPALIVE_SECONDS``; after that the stream starts with keep-alives): when that
    event is an error (the provider failed before any token), the answer is
    ``error_first(event)`` (an HTTP error, which clients can tell and retry) instead of a
    200 stream carrying an error event. Its ``headers`` are set on either answer; given as
    a function, they are made once that first event came (or the wait ended), so that
    they can name the model that answers when the first one failed before a token.
    """
    log = resumable_log(generation, resumable) if resumable else None
    stream = GenerationStream(generation, encode, log=log)
    if error_first is not None:
        first = await stream.first_event(settings.SSE_KEEPALIVE_SECONDS)
        if isinstance(first, ErrorEvent):
            await stream.aclose()  # the engine has finalised the exchange already
            response = error_first(first)
            for name, value in _made(headers).items():
                response.setdefault(name, value)
            return response
    return event_stream(stream, headers=_made(headers), content_type=content_type)


def _made(
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None,
) -> Mapping[str, str]:
    return (headers() if callable(headers) else headers) or {}


def events_of(generation: Generation) -> contextlib.aclosing:
    """``async with events_of(g) as events``: the engine's events, closed however the
    consumer stops, so the exchange is finalised in this task (a plain ``async for``
    would leave an abandoned generator to the garbage collector)."""
    return contextlib.aclosing(generation.events())


async def final_event(generation: Generation) -> FinishedEvent | ErrorEvent:
    """The generation run to its end, for answers sent whole: its last event."""
    end: FinishedEvent | ErrorEvent | None = None
    async with events_of(generation) as events:
        async for event in events:
            if isinstance(event, FinishedEvent | ErrorEvent):
                end = event
    assert end is not None, "a generation always ends with a finished or error event"
    return end
