"""Resumable streams over the wire: a client drops its stream after a few events and
resumes it on the OTHER server process (both on the same Redis and database; without
Redis, on the same process, from its in-memory log), and the text it joins is the answer
stored. Stopping a chat's stream from any process, and hostile resume requests."""

import json
import threading
import uuid

import httpx
import pytest
from django.conf import settings
from httpx_sse import EventSource
from websockets.sync.client import connect as ws_connect

from billing.models import LedgerEntry
from chats.models import Message
from tests.factories import make_chat, make_key, make_tenant
from tests.transports.conftest import poll

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "[demo:tokens=60] tell me a story"  # 60 tokens, 20 ms apart on the slow servers


@pytest.fixture
def pair(slow):
    """Where a stream starts, and where it is resumed: another process when they share
    Redis, else the same one (its log is in its memory)."""
    return (slow[0], slow[1]) if settings.REDIS_URL else (slow[0], slow[0])


def read_then_drop(url: str, body: dict, headers: dict, count: int):
    """POST, read ``count`` events, drop the connection: the response and the events."""
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        got = []
        for event in EventSource(response).iter_sse():
            got.append(event)
            if len(got) == count:
                break
    return response, got


def ui_body(chat_key: str, text: str) -> dict:
    return {
        "id": chat_key,
        "messages": [
            {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}
        ],
    }


def deltas(stream) -> str:
    chunks = [json.loads(e.data) for e in stream if e.data.startswith("{")]
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


def settled_once(tenant_id: int) -> None:
    """Every credit hold of the tenant was settled (or released), exactly once."""

    def check():
        kinds = list(LedgerEntry.objects.filter(tenant_id=tenant_id).values_list("kind", flat=True))
        closed = kinds.count(LedgerEntry.Kind.SETTLE) + kinds.count(LedgerEntry.Kind.RELEASE)
        return kinds.count(LedgerEntry.Kind.HOLD) == closed > 0

    poll(check)


def answer(chat_id, status: str) -> Message:
    return poll(
        lambda: Message.objects.filter(chat_id=chat_id, role="assistant", status=status).first()
    )


# --- AI SDK: GET /api/chat/<chatId>/stream and POST /api/chat/<chatId>/stop -------------------


def test_an_ai_sdk_stream_resumes_from_its_first_chunk_on_another_process(pair, account):
    first, second = pair
    key = f"resume-{uuid.uuid4().hex}"
    response, dropped = read_then_drop(
        f"{first.url}/api/chat", ui_body(key, LONG), account.headers, count=8
    )
    stream_id = response.headers["x-stream-id"]
    resumed_response = httpx.get(f"{second.url}/api/chat/{key}/stream", headers=account.headers)
    assert resumed_response.status_code == 200
    assert resumed_response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert resumed_response.headers["x-stream-id"] == stream_id
    resumed = list(EventSource(resumed_response).iter_sse())
    # From its first chunk: what the dropped client had, then the rest, to [DONE].
    assert [(e.id, e.data) for e in resumed[:8]] == [(e.id, e.data) for e in dropped]
    assert [e.id for e in resumed] == [str(n) for n in range(len(resumed))]
    assert resumed[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in resumed[:-1]]
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    # The client left, the answer ran on: stored complete, settled once.
    stored = answer(chunks[0]["messageMetadata"]["chatId"], "complete")
    assert stored.content == deltas(resumed) and stored.completion_tokens == 60
    settled_once(account.tenant.pk)
    assert (
        httpx.get(f"{second.url}/api/chat/{key}/stream", headers=account.headers).status_code == 204
    )


def test_stop_ends_a_chats_stream_cancelled_and_settled_from_another_process(pair, account):
    first, second = pair
    key = f"stop-{uuid.uuid4().hex}"
    seen: list = []
    started = threading.Event()

    def listen():  # the client stays connected while another process stops its stream
        with httpx.stream(
            "POST",
            f"{first.url}/api/chat",
            json=ui_body(key, "[demo:tokens=400] go on and on"),
            headers=account.headers,
            timeout=30,
        ) as response:
            for event in EventSource(response).iter_sse():
                seen.append(event)
                if len(seen) == 5:
                    started.set()

    thread = threading.Thread(target=listen)
    thread.start()
    assert started.wait(15)
    stopped = httpx.post(f"{second.url}/api/chat/{key}/stop", headers=account.headers, timeout=30)
    thread.join(30)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "cancelled"
    # The connected client's stream ended in its format.
    assert seen[-1].data == "[DONE]"
    assert json.loads(seen[-2].data) == {"type": "finish", "finishReason": "other"}
    chat_id = json.loads(seen[0].data)["messageMetadata"]["chatId"]
    stored = answer(chat_id, "cancelled")
    assert str(stored.id) == stopped.json()["messageId"]
    assert stored.content == deltas(seen) and 0 < stored.completion_tokens < 400
    settled_once(account.tenant.pk)
    assert (
        httpx.post(f"{second.url}/api/chat/{key}/stop", headers=account.headers).status_code == 204
    )


def test_another_tenant_never_sees_nor_stops_a_chats_stream(pair, account):
    first, second = pair
    key = f"mine-{uuid.uuid4().hex}"
    response, _ = read_then_drop(
        f"{first.url}/api/chat", ui_body(key, LONG), account.headers, count=3
    )
    chat_id = response.headers["x-chat-id"]
    other = make_tenant(credits=10)
    headers = {"X-API-Key": make_key(other)}
    for name in (key, chat_id):
        assert httpx.get(f"{second.url}/api/chat/{name}/stream", headers=headers).status_code == 204
        assert httpx.post(f"{second.url}/api/chat/{name}/stop", headers=headers).status_code == 204
    answer(chat_id, "complete")  # not stopped


def test_a_chat_without_a_running_stream_answers_204(slow, account):
    url = f"{slow[0].url}/api/chat/{uuid.uuid4()}/stream"
    response = httpx.get(url, headers=account.headers)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert httpx.get(url, headers={"X-API-Key": "sk_live_bad"}).status_code == 401
    too_long = httpx.get(f"{slow[0].url}/api/chat/{'x' * 300}/stream", headers=account.headers)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["details"]["chatId"]


# --- The SSE formats: Last-Event-ID at the stream's URL --------------------------------------


def _regpilot(text: str) -> tuple[str, dict]:
    return "/api/ai/chat", {"messages": [{"role": "user", "content": text}]}


def _docgen(text: str) -> tuple[str, dict]:
    return "/api/v1/chat/stream", {"message": text, "conversation_id": uuid.uuid4().hex}


def _openai(text: str) -> tuple[str, dict]:
    return "/v1/chat/completions", {
        "model": "balanced",
        "messages": [{"role": "user", "content": text}],
        "stream": True,
    }


def _text(stream, fmt: str) -> str:
    out = []
    for event in stream:
        if not event.data.startswith("{"):
            continue
        data = json.loads(event.data)
        if fmt == "regpilot" and event.event == "message":
            out.append(data.get("content", ""))
        elif fmt == "docgen" and event.event == "message":
            out.append(data["token"])
        elif fmt == "openai" and data.get("choices"):
            out.append(data["choices"][0]["delta"].get("content") or "")
    return "".join(out)


FORMATS = {"regpilot": _regpilot, "docgen": _docgen, "openai": _openai}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_sse_stream_resumes_after_its_last_event_id_on_another_process(pair, account, fmt):
    first, second = pair
    path, body = FORMATS[fmt](f"{LONG} {uuid.uuid4().hex[:6]}")
    response, dropped = read_then_drop(f"{first.url}{path}", body, account.headers, count=10)
    assert [e.id for e in dropped] == [str(n) for n in range(10)]  # every event has an id
    url = f"{second.url}{response.headers['x-stream-url']}"
    assert response.headers["x-stream-id"] in url
    resumed_response = httpx.get(url, headers={**account.headers, "Last-Event-ID": "9"}, timeout=30)
    assert resumed_response.status_code == 200
    resumed = list(EventSource(resumed_response).iter_sse())
    assert [e.id for e in resumed] == [str(n) for n in range(10, 10 + len(resumed))]
    # The whole stream, read again from the start, is the dropped part and the resumed one.
    whole = list(EventSource(httpx.get(url, headers=account.headers, timeout=30)).iter_sse())
    assert [(e.id, e.data) for e in whole] == [(e.id, e.data) for e in dropped + resumed]
    text = _text(dropped + resumed, fmt)
    assert len(text.split()) == 60
    if fmt == "docgen":
        done = json.loads(next(e.data for e in resumed if e.event == "done"))
        assert done["full_response"] == text
        assert answer(done["metadata"]["chat_id"], "complete").content == text
    if fmt == "regpilot":
        usage = json.loads(next(e.data for e in resumed if e.event == "usage"))
        assert usage["completion_tokens"] == 60
    settled_once(account.tenant.pk)
    # Nothing after the last id of an ended stream.
    last = resumed[-1].id
    ended = httpx.get(url, headers={**account.headers, "Last-Event-ID": last})
    assert ended.status_code == 204


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_resume_requests_get_clear_errors_in_the_formats_shape(slow, account, fmt):
    server = slow[0]
    path, body = FORMATS[fmt](f"[demo:tokens=3] short {uuid.uuid4().hex[:6]}")
    with httpx.stream(
        "POST", f"{server.url}{path}", json=body, headers=account.headers
    ) as response:
        response.read()
        url = f"{server.url}{response.headers['x-stream-url']}"
    base = url.rsplit("/", 1)[0]
    openai_shape = fmt == "openai"
    unprocessable = 422 if fmt == "docgen" else 400

    def error_of(resp, status):
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert error["message"]
        return error

    error_of(httpx.get(f"{base}/not-a-stream", headers=account.headers), unprocessable)
    error_of(httpx.get(f"{base}/{'f' * 300}", headers=account.headers), unprocessable)
    unknown = error_of(httpx.get(f"{base}/{uuid.uuid4().hex}", headers=account.headers), 404)
    if not openai_shape:
        assert unknown["code"] == "NOT_FOUND"
    other = {"X-API-Key": make_key(make_tenant(credits=1))}
    error_of(httpx.get(url, headers=other), 404)  # another tenant's stream is not found
    for garbage in ("abc", "-1", "1.5", "9" * 11, "4294967296", "x" * 5000, "٣".encode()):
        bad = httpx.get(url, headers={**account.headers, "Last-Event-ID": garbage})
        error = error_of(bad, unprocessable)
        assert "Last-Event-ID" in json.dumps(error)
    other_format = "/v1/chat/streams" if fmt != "openai" else "/api/ai/chat/streams"
    stream_id = url.rsplit("/", 1)[1]
    wrong = httpx.get(f"{server.url}{other_format}/{stream_id}", headers=account.headers)
    assert wrong.status_code == 404
    assert httpx.get(url, headers={"X-API-Key": "sk_live_bad"}).status_code in (401, 403)


def test_an_account_can_resume_its_stream_with_the_openai_completion_id(slow, account):
    path, body = _openai(f"[demo:tokens=5] hi {uuid.uuid4().hex[:6]}")
    _, got = read_then_drop(f"{slow[0].url}{path}", body, account.headers, count=2)
    completion_id = json.loads(got[0].data)["id"]
    again = httpx.get(f"{slow[0].url}/v1/chat/streams/{completion_id}", headers=account.headers)
    assert again.status_code == 200
    assert list(EventSource(again).iter_sse())[-1].data == "[DONE]"


def test_a_client_that_leaves_no_longer_cancels_a_resumable_stream(slow, account):
    path, body = _regpilot(f"[demo:tokens=30] on {uuid.uuid4().hex[:6]}")
    request_id = f"leave-{uuid.uuid4().hex}"
    headers = {**account.headers, "X-Request-ID": request_id}
    response, _ = read_then_drop(f"{slow[0].url}{path}", body, headers, count=2)
    url = f"{slow[0].url}{response.headers['x-stream-url']}"
    whole = list(EventSource(httpx.get(url, headers=account.headers, timeout=30)).iter_sse())
    assert len(_text(whole, "regpilot").split()) == 30  # it ran to the end
    usage = json.loads(next(e.data for e in whole if e.event == "usage"))
    assert usage["completion_tokens"] == 30 and usage["credits_charged"] > 0
    kinds = poll(
        lambda: (
            set(LedgerEntry.objects.filter(reference=request_id).values_list("kind", flat=True))
            >= {LedgerEntry.Kind.HOLD, LedgerEntry.Kind.SETTLE}
        )
    )
    assert kinds


# --- WebSocket: {"type": "resume", "message_id", "after_index"} -----------------------------


def ws_url(server, key: str, chat) -> str:
    return f"{server.ws_url}/ws/chat?api_key={key}&user_id=user123&chat_id={chat.id}"


def ws_next(ws) -> dict:
    return json.loads(ws.recv(timeout=15))


def ws_until(ws, *types: str) -> list[dict]:
    got = []
    while True:
        got.append(ws_next(ws))
        if got[-1]["type"] in types:
            return got


@pytest.fixture
def ws_chat(account):
    return make_chat(account.tenant, user_id="user123")


def test_a_websocket_answer_resumes_after_a_token_index_on_another_process(pair, account, ws_chat):
    first, second = pair
    with ws_connect(ws_url(first, account.key, ws_chat)) as ws:
        ws_until(ws, "connection_established")
        ws.send(json.dumps({"content": LONG}))
        started = ws_until(ws, "message_stream_started")[-1]
        tokens = [ws_until(ws, "message_stream_token")[-1] for _ in range(5)]
    assert [t["index"] for t in tokens] == [0, 1, 2, 3, 4]
    with ws_connect(ws_url(second, account.key, ws_chat)) as ws:
        ws_until(ws, "connection_established")
        resume = {"type": "resume", "message_id": started["message_id"], "after_index": 4}
        ws.send(json.dumps(resume))
        rest = ws_until(ws, "message_stream_ended", "error")
    ended = rest[-1]
    assert ended["type"] == "message_stream_ended" and ended["status"] == "complete"
    resumed = [e for e in rest if e["type"] == "message_stream_token"]
    assert [t["index"] for t in resumed] == list(range(5, 60))
    text = "".join(t["token"] for t in tokens + resumed)
    assert text == ended["content"] == answer(ws_chat.id, "complete").content
    settled_once(account.tenant.pk)


def test_cancel_on_a_resumed_websocket_stream_stops_it_where_it_runs(pair, account, ws_chat):
    first, second = pair
    with ws_connect(ws_url(first, account.key, ws_chat)) as ws:
        ws_until(ws, "connection_established")
        ws.send(json.dumps({"content": "[demo:tokens=400] a long one"}))
        started = ws_until(ws, "message_stream_started")[-1]
        ws_until(ws, "message_stream_token")
    with ws_connect(ws_url(second, account.key, ws_chat)) as ws:
        ws_until(ws, "connection_established")
        ws.send(json.dumps({"type": "resume", "message_id": started["message_id"]}))
        replayed = ws_until(ws, "message_stream_token")
        assert replayed[0]["type"] == "message_stream_started"  # from the start: no index
        ws.send(json.dumps({"type": "cancel"}))
        ended = ws_until(ws, "message_stream_ended", "error")[-1]
    assert (ended["type"], ended.get("status")) == ("message_stream_ended", "cancelled"), ended
    stored = answer(ws_chat.id, "cancelled")
    assert stored.content == ended["content"] and 0 < stored.completion_tokens < 400
    settled_once(account.tenant.pk)


def test_hostile_websocket_resumes_get_errors_and_the_socket_stays_open(slow, account, ws_chat):
    other_chat = make_chat(account.tenant, user_id="user123")
    with ws_connect(ws_url(slow[0], account.key, other_chat)) as ws:
        ws_until(ws, "connection_established")
        ws.send(json.dumps({"content": "[demo:tokens=3] elsewhere"}))
        foreign = ws_until(ws, "message_stream_started")[-1]["message_id"]
        ws_until(ws, "message_stream_ended")
    with ws_connect(ws_url(slow[0], account.key, ws_chat)) as ws:
        ws_until(ws, "connection_established")
        cases = [
            ({"type": "resume"}, "VALIDATION_ERROR", "message_id"),
            ({"type": "resume", "message_id": "x" * 5000}, "VALIDATION_ERROR", "message_id"),
            ({"type": "resume", "message_id": 7}, "VALIDATION_ERROR", "message_id"),
            (
                {"type": "resume", "message_id": foreign, "after_index": "3"},
                "VALIDATION_ERROR",
                "after_index",
            ),
            (
                {"type": "resume", "message_id": foreign, "after_index": 2**40},
                "VALIDATION_ERROR",
                "after_index",
            ),
            ({"type": "resume", "message_id": str(uuid.uuid4())}, "NOT_FOUND", None),
            ({"type": "resume", "message_id": foreign}, "NOT_FOUND", None),  # another chat's
        ]
        for message, code, field in cases:
            ws.send(json.dumps(message))
            error = ws_next(ws)
            assert (error["type"], error["code"]) == ("error", code), (message, error)
            if field:
                assert field in error["details"]
        ws.send(json.dumps({"type": "ping"}))
        assert ws_next(ws) == {"type": "pong"}
