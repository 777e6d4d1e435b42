"""POST /api/chat, the Vercel AI SDK UI message stream, over the wire; the real
`ai` client runs in tests/js (Node)."""

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from chats.models import Chat, Message
from chats.services import conversation_chat_id
from knowledge import services as knowledge_services
from tests.factories import make_chat, make_key, make_tenant
from tests.transports.conftest import (
    demo_reply,
    error_body,
    poll,
    post_events,
    read_then_disconnect,
    unique,
)

pytestmark = pytest.mark.django_db(transaction=True)

JS_DIR = Path(__file__).resolve().parents[1] / "js"
CHUNK_ORDER = ["start", "start-step", "text-start"]
CLOSING = ["text-end", "finish-step", "message-metadata", "finish"]


def chat_url(server) -> str:
    return f"{server.url}/api/chat"


def chunks_of(stream) -> list[dict]:
    assert stream[-1].data == "[DONE]"
    return [event.json() for event in stream[:-1]]


def ui_message(text: str, role: str = "user") -> dict:
    return {"id": uuid.uuid4().hex, "role": role, "parts": [{"type": "text", "text": text}]}


def stored(chat_id) -> list[tuple[str, str, str]]:
    return list(Message.objects.filter(chat_id=chat_id).values_list("role", "status", "content"))


# --- The real client ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_ai_package_parses_every_chunk_and_yields_the_answer(server, keepalive_server, account):
    assert (JS_DIR / "node_modules" / "ai").is_dir(), (
        "tests/js has no node_modules: run `npm ci --prefix tests/js` (make test does)"
    )
    nonce = uuid.uuid4().hex[:8]
    project = knowledge_services.project_create(tenant=account.tenant, external_id="fleet")
    knowledge_services.document_store(
        project=project,
        path="LEDGER.md",
        content="# Ledger\n\nEvery credit movement is an append-only row in the ledger.",
    )
    result = subprocess.run(
        ["node", "--test", str(JS_DIR)],
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "CHAT_URL": chat_url(server),
            "KEEPALIVE_CHAT_URL": chat_url(keepalive_server),
            "API_KEY": account.key,
            "NONCE": nonce,
            "PROJECT_ID": "fleet",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# skipped 0" in result.stdout, result.stdout
    results = {}
    for line in result.stdout.splitlines():
        if "RESULT " in line:
            value = json.loads(line.split("RESULT ", 1)[1])
            results[value["name"]] = value

    # The transport's chat id (not a UUID) is a stable chat of the tenant: two turns.
    transport = results["transport"]
    assert transport["chatId"] == str(conversation_chat_id(account.tenant, transport["chatKey"]))
    assert [(role, status) for role, status, _ in stored(transport["chatId"])] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ] * 2
    # The documented prompt request got a new chat of the tenant, with the exchange in it.
    prompt_chat = Chat.objects.get(pk=results["prompt"]["chatId"])
    assert prompt_chat.tenant_id == account.tenant.pk
    assert stored(prompt_chat.pk)[1][1] == "complete"
    # The failed stream was stored as failed with its partial content.
    assert stored(results["failure"]["chatId"])[1][1:] == ("failed", "This is")
    # The client tool's call is stored with the answer that made it; the tool results the
    # client sent back are not a user message; the answer to them follows.
    client_tool = results["clientTool"]
    rows = Message.objects.filter(chat_id=client_tool["chatId"]).order_by("created_at")
    assert [(m.role, m.status) for m in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("assistant", "complete"),
    ]
    assert rows[1].tool_calls == [
        {"id": client_tool["toolCallId"], "name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    assert rows[2].content == 'The tool get_weather returned: {"celsius": 18}'
    # The server tool's call is stored with its output, in the one answer.
    server_tool = results["serverTool"]
    (answer,) = Message.objects.filter(chat_id=server_tool["chatId"], role="assistant")
    assert answer.tool_calls[0]["id"] == server_tool["toolCallId"]
    assert json.loads(answer.tool_calls[0]["output"])["results"][0]["source"] == "LEDGER.md"
    # The stream the client resumed after leaving it is the answer stored, complete.
    resumed = results["resume"]
    (answer,) = Message.objects.filter(chat_id=resumed["chatId"], role="assistant")
    assert (answer.status, answer.content) == ("complete", resumed["text"])


# --- Wire details --------------------------------------------------------------------------


def test_stream_headers_chunk_order_and_metadata(server, account):
    said = unique("Draft a tweet")
    response, stream = post_events(chat_url(server), {"prompt": said}, account.headers)
    headers = response.headers
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["connection"] == "keep-alive"
    assert headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert headers["x-accel-buffering"] == "no"
    assert headers["access-control-allow-origin"] == "*"

    chunks = chunks_of(stream)
    types = [chunk["type"] for chunk in chunks]
    assert types[:3] == CHUNK_ORDER
    assert types[-4:] == CLOSING
    assert set(types[3:-4]) == {"text-delta"}
    text_id = chunks[2]["id"]
    assert all(chunk["id"] == text_id for chunk in chunks if chunk["type"].startswith("text-"))
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == demo_reply(said)

    start = chunks[0]
    chat_id = start["messageMetadata"]["chatId"]
    assert headers["x-chat-id"] == chat_id
    metadata = chunks[-2]["messageMetadata"]
    assert metadata["chatId"] == chat_id
    assert metadata["model"] == "demo/balanced"
    assert metadata["usage"]["outputTokens"] == types.count("text-delta")
    assert metadata["creditsRemaining"] == float(account.balance())
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assistant = Message.objects.get(chat_id=chat_id, role="assistant")
    assert str(assistant.pk) == start["messageId"]
    assert assistant.content == demo_reply(said)


def test_room_id_of_an_existing_chat_is_used(server, account):
    chat = make_chat(account.tenant)
    _, stream = post_events(
        chat_url(server), {"prompt": unique(), "roomId": str(chat.pk)}, account.headers
    )
    assert chunks_of(stream)[0]["messageMetadata"]["chatId"] == str(chat.pk)
    assert len(stored(chat.pk)) == 2


def test_a_new_room_id_creates_a_chat_found_again_by_that_room_id(server, account):
    room = str(uuid.uuid4())
    first, _ = post_events(chat_url(server), {"prompt": unique(), "roomId": room}, account.headers)
    again, _ = post_events(chat_url(server), {"prompt": unique(), "roomId": room}, account.headers)
    chat_id = first.headers["x-chat-id"]
    assert again.headers["x-chat-id"] == chat_id
    assert Chat.objects.get(pk=chat_id).tenant_id == account.tenant.pk
    assert len(stored(chat_id)) == 4


def test_the_answer_to_a_room_id_does_not_depend_on_other_tenants_chats(server, account):
    """Another tenant's chat id and an unused id are answered alike: each is this tenant's
    own chat derived from the room id, so probing reveals nothing."""
    theirs = make_chat(make_tenant())
    unused = uuid.uuid4()
    answers = {}
    for room in (theirs.pk, unused):
        response, _ = post_events(
            chat_url(server), {"prompt": unique(), "roomId": str(room)}, account.headers
        )
        answers[room] = response.headers["x-chat-id"]
    for room, chat_id in answers.items():
        assert chat_id == str(conversation_chat_id(account.tenant, str(room)))
        assert Chat.objects.get(pk=chat_id).tenant_id == account.tenant.pk
    assert not Message.objects.filter(chat=theirs).exists()


def test_the_same_room_id_in_two_tenants_is_two_chats(server, account):
    other_tenant = make_tenant(credits=100)
    other_headers = {"X-API-Key": make_key(other_tenant)}
    room = str(uuid.uuid4())
    mine, _ = post_events(chat_url(server), {"prompt": unique(), "roomId": room}, account.headers)
    theirs, _ = post_events(chat_url(server), {"prompt": unique(), "roomId": room}, other_headers)
    assert mine.headers["x-chat-id"] != theirs.headers["x-chat-id"]
    assert Chat.objects.get(pk=theirs.headers["x-chat-id"]).tenant_id == other_tenant.pk


def test_a_refused_request_leaves_no_new_chat(server):
    broke = make_tenant(credits=0)
    room = uuid.uuid4()
    response = httpx.post(
        chat_url(server),
        json={"prompt": unique(), "roomId": str(room)},
        headers={"X-API-Key": make_key(broke)},
        timeout=30,
    )
    assert response.status_code == 402
    assert error_body(response)["code"] == "INSUFFICIENT_CREDITS"
    assert not Chat.objects.filter(tenant=broke).exists()


def test_another_tenants_room_is_never_written_to(server, account):
    other = make_chat(make_tenant())
    _, stream = post_events(
        chat_url(server), {"prompt": unique(), "roomId": str(other.pk)}, account.headers
    )
    chat_id = chunks_of(stream)[0]["messageMetadata"]["chatId"]
    assert chat_id != str(other.pk)
    assert not Message.objects.filter(chat=other).exists()


def test_ui_messages_with_history_and_content_strings(server, account):
    said = unique("second question")
    messages = [
        {"id": "s", "role": "system", "content": "Be brief."},
        ui_message("first question"),
        {
            "id": "a1",
            "role": "assistant",
            "parts": [{"type": "step-start"}, {"type": "text", "text": "first answer"}],
        },
        ui_message(said),
    ]
    _, stream = post_events(
        chat_url(server),
        {"id": "web-chat-1", "messages": messages, "trigger": "submit-message"},
        account.headers,
    )
    chunks = chunks_of(stream)
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == demo_reply(said)
    assert chunks[0]["messageMetadata"]["chatId"] == str(
        conversation_chat_id(account.tenant, "web-chat-1")
    )


def test_model_may_be_a_tier_or_a_catalog_name(server, account):
    _, stream = post_events(
        chat_url(server), {"prompt": unique(), "model": "cheap"}, account.headers
    )
    assert chunks_of(stream)[0]["messageMetadata"]["model"] == "demo/cheap"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "a", "messages": [ui_message("b")]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [1]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0].parts"),
        ({"messages": [{"role": "user", "parts": "hi"}]}, "messages[0].parts"),
        (
            {"messages": [{"role": "user", "parts": [{"type": "text"}]}]},
            "messages[0].parts[0].text",
        ),
        ({"messages": [{"role": "robot", "parts": []}]}, "messages[0].role"),
        ({"messages": [ui_message("hi", "assistant")]}, "messages[0].role"),
        ({"prompt": "hi", "roomId": "room-1"}, "roomId"),
        ({"prompt": "hi", "model": 5}, "model"),
        ({"prompt": "hi", "excludeTools": [1]}, "excludeTools"),
        ({"prompt": "hi", "trigger": "other"}, "trigger"),
    ],
)
def test_validation_errors_are_400_with_cors(server, account, payload, field):
    response = httpx.post(chat_url(server), json=payload, headers=account.headers)
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == "*"
    error = error_body(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error


def test_bad_key_is_401_with_cors(server, account):
    response = httpx.post(
        chat_url(server), json={"prompt": "hi"}, headers={"x-api-key": "sk_live_bad"}
    )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "*"
    assert error_body(response)["code"] == "UNAUTHORIZED"


def test_preflight_is_200_and_allows_the_key_header(server):
    response = httpx.request(
        "OPTIONS",
        chat_url(server),
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"x-api-key", "content-type"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]


def test_upstream_failure_mid_stream_is_an_error_chunk_and_stored_failed(server, account):
    _, stream = post_events(
        chat_url(server), {"prompt": unique("[demo:fail-after=3] x")}, account.headers
    )
    chunks = chunks_of(stream)
    types = [chunk["type"] for chunk in chunks]
    assert types[-5:] == ["text-end", "finish-step", "error", "message-metadata", "finish"]
    assert types.count("text-delta") == 3
    error = next(chunk for chunk in chunks if chunk["type"] == "error")
    assert "LLM_CONNECTION_ERROR" in error["errorText"]
    assert chunks[-1]["finishReason"] == "error"
    chat_id = chunks[0]["messageMetadata"]["chatId"]
    assistant = Message.objects.get(chat_id=chat_id, role="assistant")
    assert assistant.status == "failed"
    assert assistant.content == "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


def test_a_client_that_leaves_leaves_the_answer_running_to_the_end(server, account):
    room = uuid.uuid4()
    read_then_disconnect(
        chat_url(server),
        {"prompt": "[demo:tokens=40][demo:delay=20] long", "roomId": str(room)},
        account.headers,
        lines=8,
    )
    chat_id = conversation_chat_id(account.tenant, str(room))
    assistant = poll(
        lambda: Message.objects.filter(chat_id=chat_id, role="assistant", status="complete").first()
    )
    assert assistant.completion_tokens == 40
    assert assistant.content.startswith("lorem")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_documented_curl_example_works_as_printed(server, account):
    command = f"""curl -N -X POST "{chat_url(server)}" \\
  -H "Content-Type: application/json" \\
  -H "x-api-key: {account.key}" \\
  -d '{{
    "prompt": "Draft a tweet announcing our new single."
  }}'"""
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
    )
    lines = [line[6:] for line in result.stdout.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == demo_reply("Draft a tweet announcing our new single.")


# --- Tools -------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


def test_a_client_tool_call_streams_as_tool_input_chunks(server, account):
    ask = unique('[demo:tool=get_weather {"city": "Oslo"}][demo:tool=get_weather {"city": "Rome"}]')
    _, stream = post_events(chat_url(server), {"prompt": ask, "tools": [WEATHER]}, account.headers)
    chunks = chunks_of(stream)
    types = [chunk["type"] for chunk in chunks]
    assert types[:3] == ["start", "start-step", "tool-input-start"]
    assert types[-5:] == [
        "tool-input-available",
        "tool-input-available",
        "finish-step",
        "message-metadata",
        "finish",
    ]
    assert chunks[-1]["finishReason"] == "tool-calls"
    starts = [c for c in chunks if c["type"] == "tool-input-start"]
    assert len({c["toolCallId"] for c in starts}) == 2
    assert all("providerExecuted" not in c for c in starts)
    for start in starts:
        pieces = [
            c["inputTextDelta"]
            for c in chunks
            if c["type"] == "tool-input-delta" and c["toolCallId"] == start["toolCallId"]
        ]
        (available,) = [
            c
            for c in chunks
            if c["type"] == "tool-input-available" and c["toolCallId"] == start["toolCallId"]
        ]
        assert len(pieces) > 1
        assert json.loads("".join(pieces)) == available["input"]
    assert [c["input"]["city"] for c in chunks if c["type"] == "tool-input-available"] == [
        "Oslo",
        "Rome",
    ]


def test_tool_parts_of_ui_messages_reach_the_model_as_tool_results(server, account):
    messages = [
        ui_message(unique("weather?")),
        {
            "id": "a1",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {
                    "type": "tool-get_weather",
                    "toolCallId": "call_1",
                    "state": "output-available",
                    "input": {"city": "Oslo"},
                    "output": {"celsius": 4},
                },
                {
                    "type": "dynamic-tool",
                    "toolName": "get_time",
                    "toolCallId": "call_2",
                    "state": "output-error",
                    "input": {},
                    "errorText": "clock broken",
                },
            ],
        },
    ]
    _, stream = post_events(
        chat_url(server), {"messages": messages, "tools": [WEATHER]}, account.headers
    )
    text = "".join(c["delta"] for c in chunks_of(stream) if c["type"] == "text-delta")
    assert text == (
        'The tool get_weather returned: {"celsius": 4} '
        'The tool get_time returned: {"error": "clock broken"}'
    )


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        (
            [
                {
                    "id": "a",
                    "role": "assistant",
                    "parts": [{"type": "tool-x", "state": "input-available"}],
                }
            ],
            "messages[0].parts[0].toolCallId",
        ),
        (
            [
                {
                    "id": "a",
                    "role": "assistant",
                    "parts": [{"type": "tool-bad name", "toolCallId": "c"}],
                }
            ],
            "messages[0].parts[0].type",
        ),
        (
            [{"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "hi"}]}],
            "messages[0].role",
        ),
    ],
)
def test_bad_tool_parts_are_validation_errors(server, account, messages, field):
    response = httpx.post(
        chat_url(server), json={"messages": messages}, headers=account.headers, timeout=30
    )
    assert response.status_code == 400
    assert field in error_body(response)["details"]
