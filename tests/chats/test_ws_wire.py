"""/ws/chat over a real socket, against daphne processes (and uvicorn where marked)."""

import asyncio
import json
import os

import pytest
import websockets
from asgiref.sync import sync_to_async

from billing.models import LedgerEntry
from chats.models import Message
from tests.factories import make_chat, make_key, make_tenant
from tests.live import ON_EACH_SERVER, start_server
from tests.polling import apoll

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

TIMEOUT = 10


async def next_event(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def until(ws, event_type: str) -> list[dict]:
    events = []
    while True:
        events.append(await next_event(ws))
        if events[-1]["type"] in (event_type, "error"):
            return events


async def until_own_reply(ws, *, other: str) -> list[dict]:
    """Events up to this socket's own reply, past any fanned-out end of ``other``."""
    events = []
    while True:
        events.append(await next_event(ws))
        assert events[-1]["type"] != "error", events[-1]
        if events[-1]["type"] == "message_stream_ended" and events[-1]["message_id"] != other:
            return events


@pytest.fixture
def tenant_chat():
    tenant = make_tenant(credits=1000)
    return make_key(tenant), make_chat(tenant, user_id="user123")


@ON_EACH_SERVER
async def test_documented_flow_over_the_wire(server, tenant_chat):
    key, chat = tenant_chat
    url = f"{server.ws_url}/ws/chat?api_key={key}&user_id=user123&chat_id={chat.id}"
    closed_before = server.log().count(server.last_websocket_line)
    async with websockets.connect(url) as ws:
        assert (await next_event(ws))["type"] == "connection_established"
        await ws.send(json.dumps({"content": "Hello, I need help with my account"}))
        events = await until(ws, "message_stream_ended")
    tokens = [e["token"] for e in events if e["type"] == "message_stream_token"]
    assert events[-1]["type"] == "message_stream_ended", events[-1]
    assert "".join(tokens) == events[-1]["content"]
    stored = await Message.objects.aget(pk=events[-1]["message_id"])
    assert stored.content == events[-1]["content"]
    assert stored.status == "complete"
    # Every access line of the connection (its query string held the key) is written once
    # its last one is.
    await apoll(lambda: server.log().count(server.last_websocket_line) > closed_before)
    assert key not in server.log()


@ON_EACH_SERVER
async def test_bad_key_close_code_on_the_wire(server, tenant_chat):
    url = f"{server.ws_url}/ws/chat?api_key=sk_live_nope&user_id=user123"
    async with websockets.connect(url) as ws:
        assert (await next_event(ws))["code"] == "UNAUTHORIZED"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd.code == 4001


@pytest.fixture
def second_server(server, tmp_path):
    other = start_server(tmp_path)
    yield other
    other.stop()


async def test_two_processes_serve_one_chat(server, second_server, tenant_chat):
    """Two daphne processes on one database (and one Redis when configured): each
    socket gets its own reply, and with Redis each sees the other's whole events."""
    key, chat = tenant_chat
    query = f"/ws/chat?api_key={key}&user_id=user123&chat_id={chat.id}"
    async with (
        websockets.connect(server.ws_url + query) as first,
        websockets.connect(second_server.ws_url + query) as second,
    ):
        await next_event(first)
        await next_event(second)
        await first.send(json.dumps({"content": "from the first process"}))
        first_reply = (await until(first, "message_stream_ended"))[-1]
        await second.send(json.dumps({"content": "from the second process"}))
        second_events = []
        while (
            not second_events
            or second_events[-1].get("message_id")
            in (
                None,
                first_reply["message_id"],
            )
            or second_events[-1]["type"] != "message_stream_ended"
        ):
            second_events.append(await next_event(second))
            assert second_events[-1]["type"] != "error", second_events[-1]
        second_reply = second_events[-1]
        assert first_reply["type"] == second_reply["type"] == "message_stream_ended"
        assert "from the first process" in first_reply["content"]
        assert "from the second process" in second_reply["content"]
        if os.environ.get("REDIS_URL"):
            # The second socket heard about the first exchange through Redis.
            fanned = [e for e in second_events if e.get("message_id") == first_reply["message_id"]]
            assert fanned and fanned[-1]["content"] == first_reply["content"]
    stored = await sync_to_async(list)(
        Message.objects.filter(chat=chat, role="assistant").values_list("status", flat=True)
    )
    assert stored == ["complete", "complete"]


# --- the options HTTP clients send in headers ---------------------------------------------


async def exchange(server, key: str, message: dict) -> list[dict]:
    """One message on a new chat of user123: its events, up to the answer's end."""
    async with websockets.connect(f"{server.ws_url}/ws/chat?api_key={key}&user_id=user123") as ws:
        await until(ws, "connection_established")
        await ws.send(json.dumps(message))
        return await until(ws, "message_stream_ended")


async def test_cache_control_no_cache_opts_a_message_out_of_the_response_cache(server, tenant_chat):
    key, _ = tenant_chat
    question = {"content": "[demo:tokens=5] the same question on two new chats"}

    def status(events) -> str:
        assert events[-1]["type"] == "message_stream_ended", events[-1]
        return next(e for e in events if e["type"] == "message_stream_started")["cache_status"]

    assert status(await exchange(server, key, question)) == "MISS"
    assert status(await exchange(server, key, {**question, "cacheControl": "no-cache"})) == "MISS"
    hit = await exchange(server, key, question)
    assert status(hit) == "HIT" and hit[-1]["credits_charged"] == 0


async def test_an_idempotency_key_replays_the_answer_once_stored_and_charged(server, tenant_chat):
    key, chat = tenant_chat
    url = f"{server.ws_url}/ws/chat?api_key={key}&user_id=user123&chat_id={chat.id}"
    message = {"content": "[demo:tokens=8] charge me once", "idempotencyKey": "order-17"}
    async with websockets.connect(url) as ws:
        await until(ws, "connection_established")
        await ws.send(json.dumps(message))
        first = (await until(ws, "message_stream_ended"))[-1]
    async with websockets.connect(url) as ws:  # the client reconnects and sends it again
        await until(ws, "connection_established")
        await ws.send(json.dumps(message))
        again = await until(ws, "message_stream_ended")
        await ws.send(json.dumps({**message, "content": "something else"}))
        conflict = (await until(ws, "error"))[-1]
    replay = again[-1]
    assert first["type"] == replay["type"] == "message_stream_ended", (first, replay)
    assert "message_received" not in [e["type"] for e in again]  # nothing stored twice
    for name in ("message_id", "content", "credits_charged", "credits_remaining", "usage"):
        assert replay[name] == first[name], name
    assert conflict["code"] == "VALIDATION_ERROR" and "Idempotency-Key" in conflict["details"]
    stored = await sync_to_async(list)(Message.objects.filter(chat=chat).values_list("role"))
    assert sorted(stored) == [("assistant",), ("user",)]
    charges = LedgerEntry.objects.filter(tenant_id=chat.tenant_id, kind=LedgerEntry.Kind.SETTLE)
    assert await charges.acount() == 1
