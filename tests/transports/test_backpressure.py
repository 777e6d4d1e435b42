"""A client that stops reading: the server stops generating (memory stays bounded), and
once the client has read nothing for CLIENT_STALL_TIMEOUT_SECONDS it is disconnected;
with resuming off (``STREAM_RESUME=false``) the answer then ends as cancelled, settled for
what was generated. Real sockets against a daphne process, and a uvicorn one."""

import asyncio
import json
import socket
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import websockets

from billing.models import CreditHold
from chats.models import LLMModel, Message
from tests.factories import make_chat, make_key, make_tenant
from tests.live import start_server
from tests.polling import apoll, poll

pytestmark = pytest.mark.django_db(transaction=True)

MILLION = "[demo:tokens=1000000] go"
STALL = 2.0


@pytest.fixture(params=["daphne", "uvicorn"])
def stall_server(request, tmp_path):
    server = start_server(
        tmp_path, request.param, CLIENT_STALL_TIMEOUT_SECONDS=str(STALL), STREAM_RESUME="false"
    )
    yield server
    server.stop()


@pytest.fixture
def account(stall_server):
    LLMModel.objects.create(
        name="million",
        provider="demo",
        upstream_model="demo",
        context_window=2_000_000,
        max_output_tokens=1_000_000,
        input_price_per_1k=Decimal("0.001"),
        output_price_per_1k=Decimal("0.001"),
    )
    tenant = make_tenant(credits=1000)
    return tenant, make_key(tenant)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def small_socket(port: int) -> socket.socket:
    """A client socket with a small kernel receive buffer (no autotuning)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", port))
    return sock


def ended(*, chat_id) -> Message | None:
    answers = Message.objects.filter(chat_id=chat_id, role="assistant")
    return answers.exclude(status="streaming").first()


def assert_cancelled_and_settled(answer: Message) -> None:
    assert answer.status == "cancelled"
    # Stopped with the reader: a few thousand tokens (what the socket buffers held).
    assert 0 < answer.completion_tokens < 50_000
    hold = CreditHold.objects.get(message_id=answer.id)
    assert (hold.status, hold.completion_tokens) == ("settled", answer.completion_tokens)


def test_an_sse_reader_that_stops_reading_stops_the_answer(stall_server, account):
    _, key = account
    port = int(stall_server.url.rsplit(":", 1)[1])
    room = uuid.uuid4()
    before = rss_mb(stall_server.process.pid)
    body = json.dumps({"prompt": MILLION, "roomId": str(room), "model": "million"})
    sock = small_socket(port)
    try:
        sock.sendall(
            (
                f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        head = sock.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 200"), head
        chat_id = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("x-chat-id:")
        )
        # The client reads nothing more, and keeps the connection open.
        answer = poll(lambda: ended(chat_id=chat_id), timeout=STALL + 20)
        growth = rss_mb(stall_server.process.pid) - before
    finally:
        sock.close()
    assert_cancelled_and_settled(answer)
    assert growth < 30, f"the server grew by {growth:.0f} MB"


def test_a_websocket_reader_that_stops_reading_stops_the_answer(stall_server, account):
    tenant, key = account
    chat = make_chat(tenant)
    port = int(stall_server.url.rsplit(":", 1)[1])
    url = f"{stall_server.ws_url}/ws/chat?api_key={key}&user_id=user123&chat_id={chat.id}"

    async def stall() -> float:
        before = rss_mb(stall_server.process.pid)
        async with websockets.connect(url, max_queue=4, sock=small_socket(port)) as ws:
            await ws.send(json.dumps({"content": MILLION, "model": "million"}))
            # Reads nothing more; the server disconnects it once it stalled long enough.
            await apoll(
                lambda: asyncio.to_thread(ended, chat_id=chat.id), timeout=STALL + 20, interval=0.2
            )
            return rss_mb(stall_server.process.pid) - before

    growth = asyncio.run(stall())
    assert_cancelled_and_settled(ended(chat_id=chat.id))
    assert growth < 30, f"the server grew by {growth:.0f} MB"
