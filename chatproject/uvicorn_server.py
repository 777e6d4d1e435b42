"""uvicorn, as this service runs it: ``python -m chatproject.uvicorn_server [options]``.

The production alternative to ``chatproject.server`` (daphne): the same application under
uvicorn with uvloop and httptools, doing what daphne does here where a client or the log
would notice:

- **The access log redacts secrets.** uvicorn's request lines (logger ``uvicorn.access``)
  and its WebSocket lines (``uvicorn.error``; both carry the query string, so a key sent
  as ``?api_key=``) are decoded and redacted, then go through the settings' logging.
- **An oversized WebSocket message gets an answer.** Past ``--ws-max-size`` (1 MiB, as
  daphne's default) the client gets an ``error`` event (``VALIDATION_ERROR``), then a close
  frame with code 1009 (message too big).
- **Frames marked to go with the next one do** (:data:`chatproject.send_hints.SEND_WITH_NEXT`):
  the events before an answer's first token leave in one write, as under daphne.
- **Forwarded headers only when asked** (``--proxy-headers``, off as in daphne; uvicorn's
  own default trusts them from 127.0.0.1), and no permessage-deflate (daphne offers none:
  compressing every token frame costs CPU for a few bytes).

On SIGTERM or SIGINT it stops accepting connections, closes WebSockets with code 1012
(service restart) and lets running requests finish for ``--timeout-graceful-shutdown``
seconds before cancelling them.
"""

from __future__ import annotations

import argparse
import json
import logging
from urllib.parse import unquote

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState, PayloadTooBig
from websockets.frames import Frame, Opcode

from chatproject.errors import oversized_websocket_message
from chatproject.redaction import redact_secrets
from chatproject.send_hints import SEND_WITH_NEXT

APP = "chatproject.asgi:application"
MAX_MESSAGE_BYTES = 1024 * 1024  # daphne's default
# Kubernetes kills a pod 30 s after SIGTERM by default: streams still running after this
# are cancelled with time left for their cleanup (the answer stored, the hold settled).
GRACEFUL_SHUTDOWN_SECONDS = 20


class RedactedRequestLines(logging.Filter):
    """uvicorn's lines, decoded (so an escaped key is caught too) and redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_secrets(unquote(record.getMessage()))
        record.args = ()
        return True


# No handlers: the lines go to the root logger, which the settings' LOGGING configures
# (with its redacting formatter) once the application is loaded.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redacted": {"()": RedactedRequestLines}},
    "loggers": {name: {"filters": ["redacted"]} for name in ("uvicorn.access", "uvicorn.error")},
}


class WebSocketProtocol(WebSocketsSansIOProtocol):
    _flush_due = False  # a held frame goes out on the loop's next turn, if nothing took it

    async def send(self, message) -> None:
        if not (message.get(SEND_WITH_NEXT) and self._can_hold(message)):
            await super().send(message)  # its write takes any frame held before it
            return
        try:
            self.conn.send_text(message["text"].encode())  # queued, not written yet
        except InvalidState:
            raise ClientDisconnected() from None
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_held)

    def _can_hold(self, message) -> bool:
        """A text frame on an open connection the client keeps up with (anything else goes
        as uvicorn sends it: past the transport's high-water mark, it waits to be written)."""
        return (
            self.writable.is_set()
            and message["type"] == "websocket.send"
            and message.get("bytes") is None
            and message.get("text") is not None
            and self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and not self.disconnected
        )

    def _flush_held(self) -> None:
        self._flush_due = False
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))

    def handle_parser_exception(self) -> None:
        # websockets refuses a message over the limit from its frame header, before
        # buffering it, and queues the close frame (1009); the event goes out before it.
        exc = self.conn.parser_exc
        if not (isinstance(exc, PayloadTooBig) and self.handshake_complete):
            super().handle_parser_exception()
            return
        if self.close_sent:  # called again for each later read: the rest, dropped
            return
        from chats.ws_events import error_event  # the application's modules, loaded by now

        event = error_event(oversized_websocket_message(self.config.ws_max_size))
        frame = Frame(Opcode.TEXT, json.dumps(event).encode())
        event_bytes = frame.serialize(mask=False, extensions=self.conn.extensions)
        self.transport.write(event_bytes + b"".join(self.conn.data_to_send()))
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1009, "reason": str(exc)})
        self.close_sent = True
        # Closing now would reset the connection under the rest of the message, which can
        # lose what was just sent; instead the rest is read and dropped until the client,
        # told the connection is over, closes its end (as autobahn does under daphne).
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chatproject.uvicorn_server",
        description="This service under uvicorn (uvloop, httptools): redacted access log, "
        "an answer to oversized WebSocket messages",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (8000)")
    parser.add_argument(
        "--proxy-headers",
        action="store_true",
        help="take the client address and scheme from X-Forwarded-For and X-Forwarded-Proto "
        "when the peer is one of --forwarded-allow-ips",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        help="comma-separated proxy addresses (or *) trusted with --proxy-headers "
        "(default: $FORWARDED_ALLOW_IPS, else 127.0.0.1)",
    )
    parser.add_argument(
        "--ws-max-size",
        type=int,
        default=MAX_MESSAGE_BYTES,
        help=f"largest incoming WebSocket message in bytes ({MAX_MESSAGE_BYTES})",
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=GRACEFUL_SHUTDOWN_SECONDS,
        help="seconds running requests get to finish on shutdown before they are cancelled "
        f"({GRACEFUL_SHUTDOWN_SECONDS})",
    )
    parser.add_argument("--no-access-log", action="store_true", help="no request lines")
    parser.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's own loggers' level (default: the service's LOG_LEVEL)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uvicorn.run(
        APP,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws=WebSocketProtocol,
        ws_max_size=args.ws_max_size,
        ws_per_message_deflate=False,
        lifespan="off",  # the application has no lifespan events
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        access_log=not args.no_access_log,
        log_level=args.log_level,
        log_config=LOG_CONFIG,
    )


if __name__ == "__main__":
    main()
