"""daphne as the service runs it (chatproject.server), in-process; its wire behaviour is
tested against a live server in tests/test_hostile_input.py and tests/test_uvicorn_server.py."""

from types import SimpleNamespace

from daphne.ws_protocol import WebSocketProtocol as DaphneWebSocketProtocol

import chatproject.server
from chatproject.send_hints import SEND_WITH_NEXT
from chatproject.server import WebRequest, WebSocketProtocol


def test_each_daphne_request_sends_its_writes_at_once():
    calls = []

    class Transport:
        def setTcpNoDelay(self, enabled):
            calls.append(enabled)

    server = SimpleNamespace(protocol_connected=lambda request: None)
    channel = SimpleNamespace(
        transport=Transport(),
        getPeer=lambda: None,
        getHost=lambda: None,
        factory=SimpleNamespace(server=server),
    )
    WebRequest(channel)
    assert calls == [True]  # Nagle's algorithm off: a token is not held for an ACK


def test_a_websocket_frame_marked_to_go_with_the_next_is_not_sent_on_its_own(monkeypatch):
    written, sent = [], []
    monkeypatch.setattr(DaphneWebSocketProtocol, "handle_reply", lambda self, m: written.append(m))
    monkeypatch.setattr(chatproject.server, "send_now", lambda transport: sent.append(len(written)))
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.transport = None
    protocol.handle_reply({"type": "websocket.send", "text": "a", SEND_WITH_NEXT: True})
    protocol.handle_reply({"type": "websocket.send", "text": "b", SEND_WITH_NEXT: True})
    assert sent == []  # buffered: they go with the next, or when the loop polls
    protocol.handle_reply({"type": "websocket.send", "text": "c"})
    assert sent == [3]  # all three, in one write


def test_a_websocket_frame_is_written_without_formatting_a_debug_line(monkeypatch):
    import autobahn.websocket.protocol as autobahn_protocol
    from autobahn.websocket.protocol import TrafficStats

    def formatted(*args, **kwargs):
        raise AssertionError("a debug line was formatted")

    monkeypatch.setattr(autobahn_protocol, "hltype", formatted)
    written = []
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.transport = SimpleNamespace(write=written.append)
    protocol.send_queue, protocol.logOctets = [], False
    protocol.state, protocol.trafficStats = WebSocketProtocol.STATE_OPEN, TrafficStats()
    protocol.sendData(b"\x81\x01a")
    assert written == [b"\x81\x01a"]
    assert protocol.trafficStats.outgoingOctetsWireLevel == 3


def test_twisted_formats_no_access_line_of_its_own():
    def formatted(*args):
        raise AssertionError("Twisted formatted an access line")

    lines = []
    factory = chatproject.server.HTTPFactory(SimpleNamespace())
    factory._logFormatter, factory._logFile = formatted, SimpleNamespace(write=lines.append)
    factory.log(SimpleNamespace())  # what Twisted's Request.finish calls for every request
    assert lines == []
