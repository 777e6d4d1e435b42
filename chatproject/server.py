"""daphne, as this service runs it: ``python -m chatproject.server [daphne's options] APP``.

It is daphne's own command line (every option works the same), on uvloop's event loop,
with these changes daphne has no option for:

- **The access log redacts secrets.** daphne writes each request line, query string
  included, so a key sent as ``?api_key=`` would be logged whole. Here request lines go
  through Python logging (logger ``daphne.access``, the settings' redacting formatter),
  or, with ``--access-log FILE``, to that file, redacted the same way.
- **An oversized WebSocket message gets an answer.** Past ``--websocket-max-message-size``
  (daphne's default 1 MiB) daphne's WebSocket library drops the TCP connection without a
  close frame. Here the client gets an ``error`` event (``VALIDATION_ERROR``), then a close
  frame with code 1009 (message too big).
- **Nagle's algorithm is off** (``TCP_NODELAY``, which Twisted leaves on): a streamed token
  does not wait for the client to acknowledge the one before it.
- **A write is sent when it is made.** Twisted sends what a connection writes when the event
  loop next polls for I/O, after every callback ready before it: a token written to the
  client would wait for the engine to read the upstream's next ones and, for a short
  answer, start finalising it. Here each body write and WebSocket message goes to the
  socket at once (what the socket does not take waits for the loop, as before), but a
  message marked ``SEND_WITH_NEXT``, which goes with the next one.
- **A POST body reaches the application as it came.** Twisted parses form and multipart
  bodies for its own ``request.args``, which daphne does not use: the cost of it on every
  request, and a malformed multipart body answered by Twisted's bare 400 instead of the
  endpoint's own error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from urllib.parse import unquote

import uvloop

# daphne makes its event loop when daphne.server is first imported, just below: on uvloop,
# whose scheduling of tasks, callbacks and sockets costs a tenth of a request's CPU less.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from daphne.access import AccessLogGenerator  # noqa: E402
from daphne.cli import CommandLineInterface  # noqa: E402
from daphne.http_protocol import HTTPFactory as DaphneHTTPFactory  # noqa: E402
from daphne.http_protocol import WebRequest as DaphneWebRequest  # noqa: E402
from daphne.server import Server as DaphneServer  # noqa: E402
from daphne.ws_protocol import WebSocketProtocol as DaphneWebSocketProtocol  # noqa: E402

from chatproject.redaction import redact_secrets  # noqa: E402
from chatproject.send_hints import SEND_WITH_NEXT  # noqa: E402

access_logger = logging.getLogger("daphne.access")


class RedactingAccessLog(AccessLogGenerator):
    """daphne's access log lines, decoded (so an escaped key is caught too) and redacted."""

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        request = redact_secrets(unquote(request))
        if self.stream is None:
            access_logger.info('%s "%s" %s %s', host, request, status or "-", length or "-")
            return
        super().write_entry(host, date, request, status, length, ident, user)


def send_now(transport) -> None:
    """Send what ``transport`` holds now, instead of when the loop next polls for I/O (a
    write the socket does not take whole, or an error, is left to the loop, as before)."""
    if transport is None or not transport.connected or transport.disconnecting:
        return
    if transport._writeDisconnecting:  # half-closed: the loop finishes that
        return
    if transport._tempDataLen or len(transport.dataBuffer) > transport.offset:
        transport.doWrite()


class WebSocketProtocol(DaphneWebSocketProtocol):
    def handle_reply(self, message) -> None:
        super().handle_reply(message)
        if not message.get(SEND_WITH_NEXT):
            send_now(self.transport)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # autobahn's, without its debug line: the line's arguments are formatted (and
        # coloured, by click) for every frame sent, whether debug logging is on or not:
        # about a third of what a token costs over /ws/chat.
        if sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason) -> None:
        # autobahn's hook for a message (or frame) over the limit, before any of it is
        # buffered; it then fails the connection, with a close frame (failByDrop off).
        if self.state == self.STATE_OPEN:
            from chatproject.errors import oversized_websocket_message
            from chats.ws_events import error_event

            event = error_event(oversized_websocket_message(max_msg_size))
            self.sendMessage(json.dumps(event).encode())
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)


class WebRequest(DaphneWebRequest):
    def __init__(self, *args, **kwargs) -> None:
        # Twisted would parse a POST's form or multipart body (and its Content-Type, with
        # the email package) into request.args, which daphne never reads: the application
        # gets the body as it came.
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)
        # Twisted leaves Nagle's algorithm on, so a token's small write would wait for the
        # client to acknowledge the one before it: each token goes out as it is written.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)

    def handle_reply(self, message) -> None:
        super().handle_reply(message)
        if message.get("type") == "http.response.body":
            send_now(self.transport)


class HTTPFactory(DaphneHTTPFactory):
    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = WebRequest
        return protocol

    def log(self, request) -> None:
        """Nothing: Twisted formats a combined-log line for every request here and hands it
        to its own log, which nothing reads; daphne writes the access log (redacted,
        :class:`RedactingAccessLog`) on its own."""


class Server(DaphneServer):
    def __init__(self, *args, action_logger=None, **kwargs) -> None:
        if action_logger is not None:  # daphne's CLI built one: verbosity >= 1 or --access-log
            stream = getattr(action_logger, "stream", None)
            action_logger = RedactingAccessLog(None if stream is sys.stdout else stream)
        super().__init__(*args, action_logger=action_logger, **kwargs)

    # daphne makes its factories in run(); they are replaced or adjusted as they are set.
    @property
    def http_factory(self):
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory) -> None:
        self._http_factory = HTTPFactory(factory.server)

    @property
    def ws_factory(self):
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory) -> None:
        factory.protocol = WebSocketProtocol
        factory.setProtocolOptions(failByDrop=False)  # send the close frame, then close
        self._ws_factory = factory


class ServerCommandLine(CommandLineInterface):
    description = "This service's daphne: redacted access log, an answer to oversized messages"
    server_class = Server


if __name__ == "__main__":
    ServerCommandLine.entrypoint()
