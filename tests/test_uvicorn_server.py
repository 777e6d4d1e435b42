"""What chatproject.uvicorn_server adds to uvicorn, on the wire: forwarded headers only when
asked, and a graceful shutdown. The rest (streams, /ws/chat, the redacted access log, the
oversized message) runs against it in the tests marked ``ON_EACH_SERVER`` / ``EACH_SERVER``."""

import asyncio
import signal
import time
from types import SimpleNamespace

import httpx
import pytest
from httpx_sse import EventSource

from tests.factories import ensure_defaults, make_key, make_tenant
from tests.live import start_server
from tests.polling import poll

pytestmark = pytest.mark.django_db(transaction=True)

FORWARDED = {"X-Forwarded-For": "203.0.113.9"}


@pytest.fixture
def proxied(tmp_path):
    """A uvicorn process that trusts forwarded headers from 127.0.0.1 (its own default)."""
    ensure_defaults()
    server = start_server(tmp_path, "uvicorn", options=("--proxy-headers",))
    yield server
    server.stop()


def test_forwarded_for_is_the_client_only_with_proxy_headers(uvicorn_server_process, proxied):
    for server in (uvicorn_server_process, proxied):
        assert httpx.get(f"{server.url}/healthz", headers=FORWARDED).status_code == 200
    poll(lambda: '203.0.113.9:0 - "GET /healthz' in proxied.log())
    assert "203.0.113.9" not in uvicorn_server_process.log()


def test_shutdown_lets_a_running_stream_finish(proxied):
    key = make_key(make_tenant(credits=1000))
    body = {
        "model": "balanced",
        "messages": [{"role": "user", "content": f"[demo:tokens=6][demo:delay=300] {time.time()}"}],
        "stream": True,
    }
    url = f"{proxied.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers={"X-API-Key": key}, timeout=30) as stream:
        events = EventSource(stream).iter_sse()
        first = next(events)
        proxied.process.terminate()  # SIGTERM, as a process manager stops it
        rest = [event.data for event in events]
    assert first.data != "[DONE]" and rest[-1] == "[DONE]"
    assert len(rest) >= 6  # the tokens after the first, the finish chunk and [DONE]
    # uvicorn raises the signal again once it has shut down: the exit a manager expects.
    assert proxied.process.wait(timeout=10) == -signal.SIGTERM
    assert "Finished server process" in proxied.log()
    with pytest.raises(httpx.ConnectError):  # it stopped listening
        httpx.get(f"{proxied.url}/healthz", timeout=2)


@pytest.mark.asyncio
async def test_websocket_frames_marked_to_go_with_the_next_go_in_its_write():
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from chatproject.send_hints import SEND_WITH_NEXT
    from chatproject.uvicorn_server import WebSocketProtocol

    writes, soon = [], []
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.conn = ServerProtocol()
    protocol.conn.state = State.OPEN
    protocol.handshake_complete, protocol.initial_response = True, None
    protocol.close_sent = protocol.disconnected = False
    protocol.writable = asyncio.Event()
    protocol.writable.set()
    protocol.transport = SimpleNamespace(write=writes.append, is_closing=lambda: False)
    protocol.loop = SimpleNamespace(call_soon=soon.append)

    await protocol.send({"type": "websocket.send", "text": "a", SEND_WITH_NEXT: True})
    await protocol.send({"type": "websocket.send", "text": "b", SEND_WITH_NEXT: True})
    assert writes == []  # held for the next frame
    await protocol.send({"type": "websocket.send", "text": "c"})
    assert writes == [b"\x81\x01a\x81\x01b\x81\x01c"]  # all three frames, in one write

    # A held frame no other follows goes out on the loop's next turn.
    assert len(soon) == 1
    soon.pop()()  # the first flush: nothing left to write
    await protocol.send({"type": "websocket.send", "text": "d", SEND_WITH_NEXT: True})
    soon.pop()()
    assert writes[1:] == [b"\x81\x01d"]

    # A client that is not keeping up: the frame waits to be written, as uvicorn has it.
    protocol.writable.clear()
    assert not protocol._can_hold({"type": "websocket.send", "text": "e", SEND_WITH_NEXT: True})
