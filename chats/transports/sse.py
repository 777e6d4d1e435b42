"""What the HTTP streaming transports share: SSE framing, the streaming response (with
keep-alive comments and prompt cancellation on disconnect), authentication, JSON bodies,
error handling around a view and the response headers of a generation.

A transport view is: parse the body (``schemas``), build a ``GenerationRequest``
(:func:`generation_request`), ``await start_generation(...)`` (refusals raise
``ApiError`` → an HTTP status), then return :func:`generation_response` with an encoder:
an async generator from the engine's events to the transport's own format.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from billing.authentication import presented_key
from billing.key_cache import api_key_resolve_async
from billing.limits import request_admit
from billing.models import Tenant
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode, error_response, outage_error
from chatproject.request_id import request_id_of
from chats.engine import (
    ErrorEvent,
    Event,
    FinishedEvent,
    Generation,
    GenerationRequest,
)
from chats.stream_log import LogWriter, WireHeader
from chats.transports import requests

logger = logging.getLogger(__name__)

# --- Framing -------------------------------------------------------------------------------

# A comment line with no blank line after it: a blank line would end an event, and SSE
# parsers that keep the last event id (httpx-sse, the OpenAI SDKs) then hand over an empty
# event for it once a stream's events carry ids.
KEEPALIVE = b": keep-alive\n"


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (orjson: a tenth of the json module's time)."""
    return orjson.dumps(value, default=_json_default)


def to_json(value: Any) -> str:
    return json_bytes(value).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sse(data: Any, *, event: str | None = None) -> bytes:
    """One server-sent event: ``data`` as JSON (a ``str`` is sent as it is)."""
    head = f"event: {event}\n".encode() if event else b""
    if not isinstance(data, str):  # JSON holds no raw newline: one data line
        return b"%sdata: %s\n\n" % (head, json_bytes(data))
    return head + "".join(f"data: {line}\n" for line in data.split("\n")).encode() + b"\n"


class Template:
    """An event encoded once, with a string filled in per use: a stream's token events
    differ only in their text, so each costs the encoding of that text alone."""

    SLOT = "\x00slot\x00"  # stands for the text; no event data holds NUL (it is refused)

    def __init__(self, event: bytes) -> None:
        self.before, self.after = event.split(json_bytes(self.SLOT))

    def fill(self, text: str) -> bytes:
        return self.before + json_bytes(text) + self.after


DONE = sse("[DONE]")


def credits_text(value: Decimal | None) -> str:
    """A credit amount for a header: plain decimal notation, no trailing zeros."""
    if value is None:
        return ""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def credits_number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


# --- The streaming response ----------------------------------------------------------------

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
            async with contextlib.aclosing(chunks) as source:
                async for chunk in source:
                    if not self.detached:
                        await self.queue.put(chunk)
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
    try:
        yield b""  # sends the response headers now, not with the next chunk
        while True:
            try:
                async with asyncio.timeout(interval if interval > 0 else None):
                    item = await producer.queue.get()
            except TimeoutError:
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
        await producer.aclose()


def event_stream(
    chunks: AsyncGenerator[bytes, None] | Producer,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = "text/event-stream",
) -> StreamingHttpResponse:
    """A streaming response over ``chunks``: nothing buffered, keep-alives when idle."""
    response = StreamingHttpResponse(
        with_keepalive(chunks, settings.SSE_KEEPALIVE_SECONDS), content_type=content_type
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


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
        self.last: Event | None = None
        super().__init__(self._encoded(generation, encode), keep_running=log is not None)

    async def _encoded(
        self, generation: Generation, encode: Encoder
    ) -> AsyncGenerator[bytes, None]:
        log = self.log
        try:
            async with events_of(generation) as events:
                rest = aiter(events)
                first = await anext(rest, None)
                self.first.set_result(first)
                if first is None:
                    return
                async with contextlib.aclosing(encode(self._watched(first, rest))) as chunks:
                    async for chunk in chunks:
                        if log is not None:
                            seq = log.append_chunk(chunk.decode())
                            chunk = b"id: %d\n%b" % (seq, chunk)
                        yield chunk
        finally:
            if not self.first.done():
                self.first.set_result(None)
            if log is not None:
                in_background(log.close_wire(_wire_status(self.last)))

    async def _watched(self, first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
        self.last = first
        yield first
        async for event in rest:
            self.last = event
            yield event

    async def first_event(self, timeout: float) -> Event | None:
        """The engine's first event, if it comes within ``timeout`` seconds (no limit if
        ``timeout`` is 0); None otherwise. The stream is closed if the caller is cancelled."""
        try:
            await asyncio.wait({self.first}, timeout=timeout if timeout > 0 else None)
        except BaseException:
            await self.aclose()
            raise
        return self.first.result() if self.first.done() else None


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


def stream_headers(generation: Generation, path: str) -> dict[str, str]:
    """Where a client that lost the stream resumes it (``GET`` with ``Last-Event-ID``)."""
    stream_id = generation.message_id.hex
    return {"x-stream-id": stream_id, "x-stream-url": path.format(stream_id=stream_id)}


def in_background(coroutine) -> asyncio.Future:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


_background: set[asyncio.Future] = set()


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


# --- Request side --------------------------------------------------------------------------


_RATE_LIMIT = "_plan_rate_limit"  # the request attribute endpoint() takes headers from


async def authenticate(request: HttpRequest, *, rate_limit: bool = False) -> Tenant:
    """The tenant of the request's key (``X-API-Key`` or Bearer); raises UNAUTHORIZED.

    With ``rate_limit``, the request also takes one from the tenant's plan allowance:
    for views that do not run the engine (``start_generation`` counts its own requests).
    A spent allowance raises RATE_LIMITED (429, ``Retry-After``, ``X-RateLimit-*``);
    otherwise :func:`endpoint` puts the ``X-RateLimit-*`` headers on the answer.
    """
    api_key = await api_key_resolve_async(presented_key(request.headers))
    if rate_limit:
        state, _ = await request_admit(api_key.tenant)
        if state is not None:
            setattr(request, _RATE_LIMIT, state)
    return api_key.tenant


def generation_request(
    request: HttpRequest, tenant: Tenant, messages: list[dict[str, Any]], **options: Any
) -> GenerationRequest:
    """The shared GenerationRequest builder (:mod:`chats.transports.requests`) given the
    request's id and its ``Cache-Control`` and ``Idempotency-Key`` headers."""
    return requests.generation_request(
        tenant,
        messages,
        request_id=getattr(request, "request_id", None),
        cache_control=request.headers.get("Cache-Control", ""),
        idempotency_key=request.headers.get("Idempotency-Key", ""),
        **options,
    )


# --- Response headers of a generation ------------------------------------------------------


def generation_headers(generation: Generation) -> dict[str, str]:
    """The governor's and the rate limiter's headers."""
    headers = dict(generation.decision.headers())
    if generation.rate_limit is not None:
        headers.update(generation.rate_limit.headers())
    if generation.replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


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


async def credits_remaining(generation: Generation, tenant: Tenant) -> Decimal:
    """The balance as known before the stream: after the hold, or (no hold: a cache hit)
    read now (the tenant came with its key, perhaps from the key cache a second ago)."""
    remaining = generation.credits_remaining
    if remaining is not None:
        return remaining
    balance = Tenant.objects.values_list("credit_balance", flat=True)
    return await db_call(balance.get, pk=tenant.pk)


# --- Views ---------------------------------------------------------------------------------

ErrorEncoder = Callable[[ApiError], HttpResponse]
View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def endpoint(
    *, methods: Iterable[str] = ("POST",), on_error: ErrorEncoder = error_response
) -> Callable[[View], View]:
    """An async, CSRF-exempt API view whose ApiErrors (and bugs) are answered by
    ``on_error`` in the transport's own format."""
    allowed = tuple(methods)

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase
            try:
                if request.method not in allowed:
                    raise ApiError(
                        ErrorCode.METHOD_NOT_ALLOWED,
                        f"Method {request.method} is not allowed here.",
                        headers={"Allow": ", ".join(allowed)},
                    )
                response = await view(request, *args, **kwargs)
            except ApiError as error:
                response = on_error(error)
            except Exception as exc:
                failure = outage_error(exc)
                if failure is None:
                    logger.exception("unexpected error before streaming")
                    failure = ApiError(
                        ErrorCode.STREAM_ERROR,
                        f"Internal error (request id {request_id_of(request)}).",
                    )
                else:
                    logger.warning("database unavailable: %s", exc)
                response = on_error(failure)
            state = getattr(request, _RATE_LIMIT, None)
            if state is not None:
                for name, value in state.headers().items():
                    response.setdefault(name, value)
            return response

        return csrf_exempt(wrapper)

    return decorator


def cors_headers(request: HttpRequest) -> dict[str, str]:
    """CORS headers for browser clients (``CORS_ALLOWED_ORIGINS``; ``*`` allows any)."""
    allowed = settings.CORS_ALLOWED_ORIGINS
    origin = request.headers.get("Origin", "")
    if "*" in allowed:
        allow_origin = "*"
    elif origin in allowed:
        allow_origin = origin
    else:
        return {"Vary": "Origin"}
    headers = {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": (
            "content-type, x-api-key, authorization, x-request-id, cache-control"
        ),
        "Access-Control-Expose-Headers": "x-request-id, x-vercel-ai-ui-message-stream, "
        "x-chat-id, x-stream-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining, "
        "x-ratelimit-reset",
        "Access-Control-Max-Age": "86400",
    }
    if allow_origin != "*":
        headers["Vary"] = "Origin"
    return headers


def cors(view: View) -> View:
    """CORS headers on every answer of ``view`` (errors included); ``OPTIONS`` → 200."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response: HttpResponseBase
        if request.method == "OPTIONS":
            response = HttpResponse(status=200)
        else:
            response = await view(request, *args, **kwargs)
        for name, value in cors_headers(request).items():
            response[name] = value
        return response

    return csrf_exempt(wrapper)
