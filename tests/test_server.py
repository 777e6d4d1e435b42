"""daphne as the service runs it (chatproject.server), in-process; its wire behaviour is
tested against a live server in tests/test_hostile_input.py and tests/test_uvicorn_server.py."""

from types import SimpleNamespace

from chatproject.server import WebRequest


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
