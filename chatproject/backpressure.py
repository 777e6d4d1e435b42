"""Backpressure from a client's socket to whatever produces what is sent to it.

daphne writes each message an application sends into the connection's buffer at once and
returns, so a client that stops reading makes the server hold all that was sent to it
since (a whole answer, however long). This wrapper of the ASGI application makes the
``send`` of a streamed HTTP body chunk, or of a WebSocket message, wait while the
connection's send buffer is full (Twisted's push-producer signals: over 64 KiB unsent,
with the socket's own kernel buffer held at 64 KiB too).
The sender waits, and with it the engine: the SSE producer's queue holds a few chunks
(``QUEUED_CHUNKS``) and the WebSocket consumer awaits each send, so the engine stops
within a few tokens and the provider stream is no longer read. Memory per stream stays
bounded whatever the reader does.

A reader that stays stalled for ``CLIENT_STALL_TIMEOUT_SECONDS`` is disconnected; its
request then ends like any disconnect (the answer stored as ``cancelled``, settled for
what was sent).

uvicorn holds a send itself while its transport is over its high-water mark; there only
the stall limit is added, and the kernel send buffer is held at 64 KiB the same way.
Anything else (the test clients) passes through untouched.
"""

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable

from django.conf import settings

logger = logging.getLogger(__name__)

_STREAMED = ("http.response.body", "websocket.send")
KERNEL_SEND_BUFFER = 64 * 1024


class _Flow:
    """A Twisted push producer standing for the application: the connection pauses it
    when its send buffer fills up, and resumes it once the buffer has drained."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()

    # Twisted's IPushProducer
    def pauseProducing(self) -> None:
        self.writable.clear()

    def resumeProducing(self) -> None:
        self.writable.set()

    def stopProducing(self) -> None:  # the connection is going away
        self.writable.set()


def _daphne_protocol(send):
    """The connection behind daphne's ``send`` (``partial(server.handle_reply, protocol)``)."""
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        if hasattr(protocol, "registerProducer") and hasattr(protocol, "transport"):
            return protocol
    return None


def with_backpressure(app):
    """``app``, whose streamed sends wait while the client is not reading."""

    async def wrapped(scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await app(scope, receive, send)
        protocol = _daphne_protocol(send)
        if protocol is None:
            uvicorn = _UvicornFlow.of(send)
            if uvicorn is None:
                return await app(scope, receive, send)
            return await app(scope, receive, uvicorn.limited(send))
        flow = None  # a _Flow once the response streams
        registered = False

        async def paced_send(message):
            nonlocal flow, registered
            if message["type"] in _STREAMED:
                # Only streams pay for this: a whole HTTP body goes out as it did.
                if not registered and message.get("more_body", True):
                    registered, flow = True, _register(protocol, scope["type"])
                if flow is not None and not flow.writable.is_set():
                    await _wait_for_reader(flow, protocol)
            await send(message)

        try:
            return await app(scope, receive, paced_send)
        finally:
            if flow is not None:
                _unregister(protocol)

    return wrapped


class _UvicornFlow:
    """uvicorn's own flow control of a connection: its ``send`` waits while the transport
    is over its high-water mark, for as long as the client takes. This adds the stall
    limit."""

    def __init__(self, paused: Callable[[], bool], drained: Callable[[], Awaitable], transport):
        self.paused, self.drained, self.transport = paused, drained, transport
        self.streaming = False

    @classmethod
    def of(cls, send) -> "_UvicornFlow | None":
        """The flow behind uvicorn's ``send``: a method of its HTTP request cycle (with a
        ``flow``) or of its WebSocket protocol (with a ``writable`` event)."""
        owner = getattr(send, "__self__", None)
        if owner is None or not _is_uvicorn(owner):
            return None
        flow = getattr(owner, "flow", None)
        if flow is not None:
            return cls(lambda: flow.write_paused, flow.drain, owner.transport)
        writable = owner.writable
        return cls(lambda: not writable.is_set(), writable.wait, owner.transport)

    def limited(self, send):
        async def limited_send(message):
            if message["type"] in _STREAMED:
                if not self.streaming and message.get("more_body", True):
                    self.streaming = True  # a stream (a whole HTTP body goes out as it did)
                    _hold_kernel_buffer(self.transport.get_extra_info("socket"))
                if self.paused():
                    await self._wait_for_reader()
            await send(message)

        return limited_send

    async def _wait_for_reader(self) -> None:
        if not await _reader_caught_up(self.drained()):
            self.transport.abort()
            await asyncio.Event().wait()  # the disconnect cancels this, as with daphne


def _is_uvicorn(owner) -> bool:
    # Imported here: a daphne process never gets this far (its send is daphne's).
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return isinstance(owner, RequestResponseCycle | WebSocketsSansIOProtocol)


def _hold_kernel_buffer(handle) -> None:
    """A fixed kernel send buffer: left to grow (up to net.ipv4.tcp_wmem's 4 MiB) it keeps
    taking a little more from a client that reads nothing, which then never looks
    stalled. Token streams need little."""
    with contextlib.suppress(OSError, AttributeError):
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)


def _register(protocol, kind: str) -> _Flow | None:
    """A flow registered on the connection; None where that cannot be (it is closed)."""
    flow = _Flow()
    try:
        if kind == "websocket" and protocol.transport.producer is not None:
            # The HTTP channel the upgrade came through is still the socket's producer.
            protocol.transport.unregisterProducer()
        protocol.registerProducer(flow, True)
    except (RuntimeError, ValueError, AttributeError):
        logger.warning("no backpressure for this %s connection", kind, exc_info=True)
        return None
    with contextlib.suppress(AttributeError):
        _hold_kernel_buffer(protocol.transport.getHandle())
    return flow


def _unregister(protocol) -> None:
    # (The connection may be gone already.)
    with contextlib.suppress(RuntimeError, ValueError, AttributeError):
        protocol.unregisterProducer()


async def _reader_caught_up(drained: Awaitable) -> bool:
    """Whether the client read again (``drained`` came) within
    ``CLIENT_STALL_TIMEOUT_SECONDS``."""
    stall = settings.CLIENT_STALL_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(stall if stall > 0 else None):
            await drained
        return True
    except TimeoutError:
        logger.info("client stopped reading for %s s: disconnecting it", stall)
        return False


async def _wait_for_reader(flow: _Flow, protocol) -> None:
    if await _reader_caught_up(flow.writable.wait()):
        return
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        transport.abortConnection()
    # The disconnect reaches the application in a moment and cancels this send (Django
    # cancels the response, the consumer its generation); sending on would go nowhere.
    await asyncio.Event().wait()
