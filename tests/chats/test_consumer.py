"""/ws/chat against the real ASGI application, in process."""

import asyncio
import json
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from billing.models import Plan, Tenant
from chatproject.asgi import application
from chatproject.send_hints import SEND_WITH_NEXT
from chats.models import Chat, EndUser, Message
from tests.factories import make_chat, make_tenant
from tests.polling import apoll

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

TIMEOUT = 10


async def connect(key, *, user_id="user123", chat_id=None, headers=None, query=None):
    params = {"user_id": user_id, **({"api_key": key} if key else {}), **(query or {})}
    if chat_id:
        params["chat_id"] = str(chat_id)
    path = "/ws/chat?" + "&".join(f"{k}={v}" for k, v in params.items())
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, code = await communicator.connect(timeout=TIMEOUT)
    return communicator, connected, code


async def receive(communicator) -> dict:
    return await communicator.receive_json_from(timeout=TIMEOUT)


async def receive_until(communicator, event_type: str) -> list[dict]:
    events = []
    while True:
        event = await receive(communicator)
        events.append(event)
        if event["type"] in (event_type, "error"):
            return events


async def expect_close(communicator, code: int) -> dict:
    """A refused connection: an error event, then the close code."""
    error = await receive(communicator)
    assert error["type"] == "error"
    closed = await communicator.receive_output(timeout=TIMEOUT)
    assert closed == {"type": "websocket.close", "code": code}
    return error


async def test_full_event_sequence(account):
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    ws, connected, _ = await connect(key, chat_id=chat.id)
    assert connected
    established = await receive(ws)
    assert established["type"] == "connection_established"
    assert established["chat_id"] == str(chat.id)
    assert established["user_id"] == "user123"
    assert established["connection_id"]

    await ws.send_json_to({"content": "Hello, I need help with my account"})
    events = await receive_until(ws, "message_stream_ended")
    types = [e["type"] for e in events]
    assert types[:2] == ["message_received", "message_stream_started"]
    assert types[-1] == "message_stream_ended"
    assert set(types[2:-1]) == {"message_stream_token"}

    received, started, *tokens, ended = events
    assert received["content"] == "Hello, I need help with my account"
    assert started["model"].startswith("demo/")
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert all(t["message_id"] == started["message_id"] for t in tokens)
    joined = "".join(t["token"] for t in tokens)
    assert joined == ended["content"]
    assert "Hello, I need help with my account" in joined
    assert ended["finish_reason"] == "stop"
    assert ended["usage"]["completion_tokens"] == len(tokens)

    stored = await sync_to_async(list)(
        Message.objects.filter(chat=chat)
        .order_by("created_at")
        .values("id", "role", "content", "status")
    )
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert str(stored[0]["id"]) == received["message_id"]
    assert str(stored[1]["id"]) == ended["message_id"]
    assert stored[1]["content"] == joined
    await ws.disconnect()


async def test_the_events_before_the_first_token_go_out_with_it(account):
    """Marked for the server to write with the next frame: one write, not three, before
    the first token (chatproject.send_hints), which goes out at once; the tokens after it
    go out with the next, so those ready together share a write; the end goes at once."""
    chat = await sync_to_async(make_chat)(account.tenant)
    ws, connected, _ = await connect(account.key, chat_id=chat.id)
    assert connected
    await receive(ws)  # connection_established
    await ws.send_json_to({"content": "Hello"})
    marked = []
    while True:
        message = await ws.receive_output(timeout=TIMEOUT)
        event = json.loads(message["text"])
        marked.append((event["type"], message.get(SEND_WITH_NEXT, False)))
        if event["type"] == "message_stream_ended":
            break
    tokens = [flag for kind, flag in marked if kind == "message_stream_token"]
    assert len(tokens) > 1
    assert [pair for pair in marked if pair[0] != "message_stream_token"] == [
        ("message_received", True),
        ("message_stream_started", True),
        ("message_stream_ended", False),
    ]
    assert tokens == [False] + [True] * (len(tokens) - 1)


async def test_history_reaches_the_model(account):
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": "first question"})
    first = (await receive_until(ws, "message_stream_ended"))[-1]
    await ws.send_json_to({"content": "second question"})
    second = (await receive_until(ws, "message_stream_ended"))[-1]
    assert second["type"] == "message_stream_ended", second
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    await ws.disconnect()


async def test_without_chat_id_a_chat_and_user_are_created(account):
    tenant, key = account.tenant, account.key
    ws, connected, _ = await connect(key, user_id="newcomer")
    assert connected
    established = await receive(ws)
    assert (await receive(ws)) == {"type": "user_created", "user_id": "newcomer"}
    chat = await Chat.objects.select_related("end_user").aget(pk=established["chat_id"])
    assert chat.end_user.external_id == "newcomer"
    assert chat.tenant_id == tenant.id
    await ws.disconnect()


async def test_key_in_header_is_accepted(account):
    key = account.key
    ws, connected, _ = await connect(None, headers=[(b"x-api-key", key.encode())])
    assert connected
    assert (await receive(ws))["type"] == "connection_established"
    await ws.disconnect()


@pytest.mark.parametrize("key", [None, "sk_live_unknown_key_0000000000000000"])
async def test_bad_key_closes_4001(account, key):
    ws, _, _ = await connect(key)
    error = await expect_close(ws, 4001)
    assert error["code"] == "UNAUTHORIZED"


async def test_unknown_chat_closes_4004(account):
    key = account.key
    ws, _, _ = await connect(key, chat_id=uuid.uuid4())
    await expect_close(ws, 4004)


async def test_malformed_chat_id_closes_4004(account):
    key = account.key
    ws, _, _ = await connect(key, chat_id="not-a-uuid")
    await expect_close(ws, 4004)


async def test_foreign_chat_closes_4004(account):
    key = account.key
    other_chat = await sync_to_async(make_chat)(await sync_to_async(make_tenant)(name="other"))
    ws, _, _ = await connect(key, chat_id=other_chat.id)
    await expect_close(ws, 4004)


async def test_another_users_chat_closes_4004(account):
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant, user_id="alice")
    ws, _, _ = await connect(key, user_id="mallory", chat_id=chat.id)
    await expect_close(ws, 4004)


async def test_missing_user_id_closes_4400(account):
    key = account.key
    communicator = WebsocketCommunicator(application, f"/ws/chat?api_key={key}")
    await communicator.connect(timeout=TIMEOUT)
    assert (await expect_close(communicator, 4400))["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"content": ""}), "content"),
        (json.dumps({"content": 42}), "content"),
        (json.dumps({}), "content"),
        (json.dumps({"content": "x" * 20001}), "no more than"),
        (json.dumps({"content": "hi", "temperature": 5}), "temperature"),
        (json.dumps({"type": "dance"}), "Unknown message type"),
    ],
)
async def test_bad_input_is_an_error_event_and_the_connection_stays(account, frame, fragment):
    key = account.key
    ws, _, _ = await connect(key)
    await receive(ws)
    await receive(ws)  # user_created
    await ws.send_to(text_data=frame)
    error = await receive(ws)
    assert error["type"] == "error"
    assert error["code"] == "VALIDATION_ERROR"
    assert fragment in error["message"]
    assert error["retryable"] is False
    await ws.send_json_to({"type": "ping"})
    assert await receive(ws) == {"type": "pong"}
    await ws.disconnect()


async def test_more_than_ten_messages_per_second_is_rate_limited(account):
    key = account.key
    ws, _, _ = await connect(key)
    await receive(ws)
    await receive(ws)
    for _ in range(11):
        await ws.send_json_to({"type": "ping"})
    replies = [await receive(ws) for _ in range(11)]
    assert [r["type"] for r in replies].count("pong") == 10
    limited = next(r for r in replies if r["type"] == "error")
    assert (limited["code"], limited["retryable"]) == ("RATE_LIMITED", True)
    await asyncio.sleep(0.3)  # the bucket refills; the connection is still open
    await ws.send_json_to({"type": "ping"})
    assert await receive(ws) == {"type": "pong"}
    await ws.disconnect()


async def pongs_until_refused(ws) -> tuple[int, dict, float]:
    """Ping until refused: the pongs before, the refusal, and the seconds it took."""
    began, pongs = time.monotonic(), 0
    while True:
        await ws.send_json_to({"type": "ping"})
        reply = await receive(ws)
        if reply["type"] != "pong":
            return pongs, reply, time.monotonic() - began
        pongs += 1
        assert pongs < 50


@pytest.mark.parametrize("before, after", [(5, 2), (2, 5)])
async def test_the_message_rate_is_the_current_plans(account, monkeypatch, before, after):
    """After a plan change, the rate enforced is the new plan's, as the error says."""
    from chats import ws_session

    tenant, key = account.tenant, account.key
    old = await Plan.objects.acreate(name="old", display_name="Old", ws_messages_per_second=before)
    new = await Plan.objects.acreate(name="new", display_name="New", ws_messages_per_second=after)
    await Tenant.objects.filter(pk=tenant.pk).aupdate(plan=old)
    ws, _, _ = await connect(key)
    await receive(ws)
    await receive(ws)
    await Tenant.objects.filter(pk=tenant.pk).aupdate(plan=new)
    monkeypatch.setattr(ws_session, "KEY_RECHECK_SECONDS", 0)  # the next message rereads it
    await ws.send_json_to({"content": "[demo:tokens=1] hi"})
    assert (await receive_until(ws, "message_stream_ended"))[-1]["type"] != "error"
    await asyncio.sleep(1.1)  # a full allowance again, whichever the plan
    pongs, limited, seconds = await pongs_until_refused(ws)
    assert after <= pongs <= after + int(seconds * after)  # (it refills meanwhile)
    assert limited["code"] == "RATE_LIMITED"
    assert f"More than {after} messages per second" in limited["message"]
    await ws.disconnect()


async def wait_for_message(chat_id, status: str) -> Message:
    answers = Message.objects.filter(chat_id=chat_id, role="assistant", status=status)
    return await apoll(answers.afirst, timeout=5, interval=0.05)


SLOW = "[demo:tokens=200][demo:delay=20] tell me a long story"


async def test_cancel_stops_the_stream_and_keeps_partial_content(account):
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": SLOW})
    tokens = []
    while len(tokens) < 5:
        event = await receive(ws)
        if event["type"] == "message_stream_token":
            tokens.append(event["token"])
    await ws.send_json_to({"type": "cancel"})
    while True:
        event = await receive(ws)
        if event["type"] == "message_stream_ended":
            break
        tokens.append(event["token"])
    assert event["status"] == "cancelled"
    assert event["finish_reason"] == "cancelled"
    message = await wait_for_message(chat.id, "cancelled")
    assert message.content == "".join(tokens) == event["content"]
    assert 5 <= message.completion_tokens < 200
    await ws.send_json_to({"type": "ping"})  # still connected
    assert await receive(ws) == {"type": "pong"}
    await ws.disconnect()


async def test_a_disconnect_mid_stream_leaves_the_answer_running_to_the_end(account):
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": "[demo:tokens=40][demo:delay=20] tell me a story"})
    tokens = []
    while len(tokens) < 3:
        event = await receive(ws)
        if event["type"] == "message_stream_token":
            tokens.append(event["token"])
    await ws.disconnect()
    message = await wait_for_message(chat.id, "complete")
    assert message.content.startswith("".join(tokens))
    assert message.completion_tokens == 40


async def test_without_resuming_a_disconnect_mid_stream_cancels(account, settings):
    settings.STREAM_RESUME = False
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": SLOW})
    tokens = []
    while len(tokens) < 3:
        event = await receive(ws)
        if event["type"] == "message_stream_token":
            tokens.append(event["token"])
    await ws.disconnect()
    message = await wait_for_message(chat.id, "cancelled")
    assert message.content.startswith("".join(tokens))
    assert len(message.content) < len("lorem ") * 200


async def test_upstream_failure_mid_stream(account):
    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": "[demo:fail-after=3] hello there my friend"})
    events = await receive_until(ws, "message_stream_ended")
    tokens = [e["token"] for e in events if e["type"] == "message_stream_token"]
    error = events[-1]
    assert len(tokens) == 3
    assert error["type"] == "error"
    assert (error["code"], error["retryable"]) == ("LLM_CONNECTION_ERROR", True)
    assert error["partial_content"] == "".join(tokens)
    message = await wait_for_message(chat.id, "failed")
    assert message.content == "".join(tokens)
    await ws.disconnect()


async def test_ping_during_a_stream_is_answered(account):
    key = account.key
    ws, _, _ = await connect(key)
    await receive(ws)
    await receive(ws)
    await ws.send_json_to({"content": SLOW})
    while (await receive(ws))["type"] != "message_stream_token":
        pass
    await ws.send_json_to({"type": "ping"})
    while (event := await receive(ws))["type"] == "message_stream_token":
        pass
    assert event == {"type": "pong"}
    await ws.send_json_to({"type": "cancel"})
    # The cancelled answer is stored and settled before the test's database goes away.
    while (await receive(ws))["type"] != "message_stream_ended":
        pass
    await ws.disconnect()


async def test_the_51st_connection_is_refused_4029(account):
    key = account.key
    sockets = []
    for _ in range(50):
        ws, connected, _ = await connect(key)
        assert connected
        assert (await receive(ws))["type"] == "connection_established"
        sockets.append(ws)
    extra, _, _ = await connect(key)
    assert (await expect_close(extra, 4029))["code"] == "CONNECTION_LIMIT"
    await sockets.pop().disconnect()  # a slot frees up
    again, connected, _ = await connect(key)
    assert connected and (await receive(again))["type"] == "connection_established"
    for ws in [*sockets, again]:
        await ws.disconnect()


async def test_browser_origin_must_be_an_allowed_host(account):
    key = account.key
    _, connected, _ = await connect(key, headers=[(b"origin", b"https://evil.example")])
    assert not connected
    ws, connected, _ = await connect(key, headers=[(b"origin", b"http://localhost:8000")])
    assert connected
    await ws.disconnect()


async def test_end_user_is_created_once(account):
    tenant, key = account.tenant, account.key
    for _ in range(2):
        ws, _, _ = await connect(key, user_id="repeat")
        await receive(ws)
        await ws.disconnect()
    assert await EndUser.objects.filter(tenant=tenant, external_id="repeat").acount() == 1


async def test_live_connections_keep_their_slots(account, settings):
    """Slots lapse unless refreshed; the process refreshes its live connections."""
    from billing import limits
    from chats import ws_slots

    settings.WS_CONNECTION_SLOT_TTL_SECONDS = 0.3
    tenant, key = account.tenant, account.key
    await Plan.objects.filter(pk=tenant.plan_id).aupdate(ws_max_connections=1)
    first, connected, _ = await connect(key)
    assert connected
    await receive(first)
    await asyncio.sleep(0.6)  # two TTLs: only the refresh keeps the slot taken
    second, _, _ = await connect(key)
    assert (await expect_close(second, 4029))["code"] == "CONNECTION_LIMIT"
    await first.disconnect()
    assert not ws_slots._held
    await limits.connection_admit(tenant, "after-release")


async def test_a_refresh_on_its_way_when_a_connection_closes_does_not_keep_its_slot(
    account, settings, monkeypatch
):
    from billing import limits
    from chats import ws_slots

    settings.WS_CONNECTION_SLOT_TTL_SECONDS = 30  # the periodic refresh stays out of it
    tenant = account.tenant
    await Plan.objects.filter(pk=tenant.plan_id).aupdate(ws_max_connections=1)
    await limits.connection_admit(tenant, "closing")
    on_its_way = asyncio.Event()
    real_refresh = limits.connection_refresh

    async def slow_refresh(tenant, connection_id):
        on_its_way.set()
        await asyncio.sleep(0.05)
        return await real_refresh(tenant, connection_id)

    monkeypatch.setattr(limits, "connection_refresh", slow_refresh)
    ws_slots.keep("closing", tenant, on_lost=None, owner=None)
    try:
        refreshing = asyncio.ensure_future(ws_slots.refresh_all())
        await on_its_way.wait()
        await ws_slots.release(tenant, "closing")  # the connection closes meanwhile
        await refreshing
        await limits.connection_admit(tenant, "next")
    finally:
        ws_slots._task.cancel()


async def test_an_unexpected_failure_while_connecting_closes_4500(account, monkeypatch):
    from chats import ws_session

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(ws_session.services, "chat_create", broken)
    key = account.key
    ws, _, _ = await connect(key)
    error = await expect_close(ws, 4500)
    assert error["code"] == "STREAM_ERROR"
    assert "database" not in error["message"]


async def test_cancel_while_the_request_is_admitted(account, monkeypatch):
    """A cancel that arrives before the first token stops the answer from starting."""
    import time

    from chats.engine import admission

    tenant, key = account.tenant, account.key
    chat = await sync_to_async(make_chat)(tenant)
    real_admit = admission._admit
    admitting: list[bool] = []

    def slow_admit(*args):
        admitting.append(True)
        time.sleep(0.3)
        return real_admit(*args)

    monkeypatch.setattr(admission, "_admit", slow_admit)
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": "hello"})
    await apoll(lambda: admitting)
    await ws.send_json_to({"type": "cancel"})
    await asyncio.sleep(0.6)
    await ws.send_json_to({"type": "ping"})
    assert await receive(ws) == {"type": "pong"}  # no stream events came before it
    assert not await Message.objects.filter(chat=chat, role="assistant").aexists()
    await ws.disconnect()


async def test_a_key_revoked_while_connected_closes_4001(account, monkeypatch):
    from billing.models import ApiKey
    from chats import ws_session

    monkeypatch.setattr(ws_session, "KEY_RECHECK_SECONDS", 0)
    key = account.key
    ws, _, _ = await connect(key)
    await receive(ws)
    await receive(ws)
    await ApiKey.objects.all().aupdate(revoked_at=timezone.now())
    await ws.send_json_to({"content": "still there?"})
    error = await expect_close(ws, 4001)
    assert error["code"] == "UNAUTHORIZED"


# --- hostile input and crash safety ---------------------------------------------------------


async def connected_socket(key, **kwargs):
    ws, connected, _ = await connect(key, **kwargs)
    assert connected
    await ws.send_json_to({"type": "ping"})
    while (await receive(ws))["type"] != "pong":  # connection_established, user_created
        pass
    return ws


async def still_answers(ws) -> None:
    await ws.send_json_to({"type": "ping"})
    assert await receive(ws) == {"type": "pong"}


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 1_000 + "]" * 1_000,
        '{"content": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"content": "a\\u0000b"}',
        '{"content": "lone \\ud800"}',
        '{"content": "hi", "governorMetadata": {"actionType": "other", "senderId": "\\u0000"}}',
        '{"content": "hi", "client_message_id": "' + "x" * 101 + '"}',
        '{"content": "hi", "temperature": 1e400}',
        '{"content": NaN}',
    ],
    ids=["deep-1000", "deep-10000", "nul", "surrogate", "nul-metadata", "long-id", "huge", "nan"],
)
async def test_hostile_frames_are_validation_errors_and_the_socket_survives(account, frame):
    key = account.key
    ws = await connected_socket(key)
    await ws.send_to(text_data=frame)
    error = await receive(ws)
    assert error["type"] == "error"
    assert error["code"] == "VALIDATION_ERROR"
    await still_answers(ws)
    await ws.disconnect()


async def test_a_bug_while_handling_a_message_is_answered_and_the_socket_survives(
    account, monkeypatch
):
    from chats import consumers

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(consumers.schemas, "parse_ws_message", broken)
    key = account.key
    ws = await connected_socket(key)
    await ws.send_json_to({"content": "hello"})
    error = await receive(ws)
    assert error["code"] == "STREAM_ERROR"
    assert "boom" not in error["message"]
    monkeypatch.undo()
    await still_answers(ws)
    await ws.disconnect()


async def test_a_consumer_that_dies_gives_its_slot_back(account, monkeypatch):
    from billing import limits
    from chats import consumers, ws_slots

    async def broken(self, message):
        raise RuntimeError("a bug outside any handler's own error handling")

    tenant, key = account.tenant, account.key
    await Plan.objects.filter(pk=tenant.plan_id).aupdate(ws_max_connections=1)
    chat = await sync_to_async(make_chat)(tenant)
    ws = await connected_socket(key, chat_id=chat.id)
    monkeypatch.setattr(consumers.ChatConsumer, "chat_event", broken)
    event = {"type": "chat.event", "event": {"type": "pong"}, "sender": "another socket"}
    await get_channel_layer().group_send(f"chat.{chat.id}", event)
    with pytest.raises(RuntimeError):  # the consumer ended with the bug
        await ws.receive_output(timeout=1)
    assert not ws_slots._held
    await limits.connection_admit(tenant, "after-the-crash")


async def test_the_refresher_releases_the_slot_of_a_consumer_that_is_gone(account, settings):
    from billing import limits
    from chats import ws_slots

    settings.WS_CONNECTION_SLOT_TTL_SECONDS = 30  # the periodic refresh stays out of it
    tenant = account.tenant
    await Plan.objects.filter(pk=tenant.plan_id).aupdate(ws_max_connections=1)
    await limits.connection_admit(tenant, "gone")
    ended = asyncio.ensure_future(asyncio.sleep(0))
    await ended
    ws_slots.keep("gone", tenant, on_lost=None, owner=ended)
    try:
        await ws_slots.refresh_all()
        assert "gone" not in ws_slots._held
        await limits.connection_admit(tenant, "next")
    finally:
        ws_slots._task.cancel()


@pytest.mark.parametrize("user_id", ["a%00b", "%00"])
async def test_a_nul_in_the_user_id_closes_4400(account, user_id):
    key = account.key
    ws, _, _ = await connect(key, user_id=user_id)
    assert (await expect_close(ws, 4400))["code"] == "VALIDATION_ERROR"


async def test_a_nul_in_the_chat_id_closes_4004(account):
    key = account.key
    ws, _, _ = await connect(key, chat_id="abc%00")
    await expect_close(ws, 4004)


async def test_messages_are_handled_with_no_thread_hand_off(account, request):
    """Channels would close stale database connections before every message, through a
    thread; the consumer's database work is on threads of its own, so it does not."""
    ws, _, _ = await connect(account.key)
    await receive(ws)
    await receive(ws)  # user_created
    hand_offs = request.getfixturevalue("hand_offs")  # from here on
    for _ in range(3):
        await ws.send_json_to({"type": "ping"})
        assert await receive(ws) == {"type": "pong"}
    assert hand_offs == []
    await ws.disconnect()


async def test_a_chats_only_socket_sends_nothing_to_its_group(account, monkeypatch):
    """Whole events go to the chat's other sockets: none when it has no other."""
    layer = get_channel_layer()
    sent = []
    group_send = layer.group_send

    async def counted(group, message):
        sent.append(message["event"]["type"])
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", counted)
    chat = await sync_to_async(make_chat)(account.tenant)
    alone = await connected_socket(account.key, chat_id=chat.id)
    await alone.send_json_to({"content": "just me"})
    await receive_until(alone, "message_stream_ended")

    other = await connected_socket(account.key, chat_id=chat.id)
    await alone.send_json_to({"content": "now two of us"})
    await receive_until(alone, "message_stream_ended")
    heard = await receive_until(other, "message_stream_ended")
    assert [e["type"] for e in heard] == ["message_received", "message_stream_ended"]
    # The second exchange's, published after the first's (in order): the first sent none.
    assert sent == ["message_received", "message_stream_ended"]
    await alone.disconnect()
    await other.disconnect()
