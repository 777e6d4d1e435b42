"""The output guard over the wire, on every transport, against the live server: a policy
that redacts e-mail addresses in answers gets them redacted before any token reaches the
client, the stored answer is what was sent, and the audit record says what was changed.
Active markup a client sends is neutralised (or refused) before it is stored or reaches the
model. The demo model echoes the user's message, so what it says is known."""

import asyncio
import json
import uuid

import httpx
import openai
import pytest
import websockets
from asgiref.sync import sync_to_async

from chats.models import Message
from governor.models import AuditRecord
from governor.services import policy_update
from tests.factories import make_chat, make_key, make_tenant
from tests.polling import poll
from tests.transports.conftest import events

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "jane.doe@example.com"


def said(text: str = "") -> str:
    # Unique, so the response cache (which outlives test databases) never answers it.
    return f"reach me at {EMAIL} {text} #{uuid.uuid4().hex[:8]}"


def guarded_account(**policy) -> tuple:
    tenant = make_tenant(credits=1000)
    policy_update(tenant=tenant, **({"output_redact": ["email"]} | policy))
    return tenant, make_key(tenant)


def assert_guarded(tenant, tokens: list[str], final: str) -> None:
    sent = "".join(tokens)
    assert EMAIL not in sent
    assert "[REDACTED:email]" in sent
    assert final == sent
    record = poll(
        lambda: AuditRecord.objects.filter(tenant=tenant, completed_at__isnull=False).first()
    )
    assert record.output_findings["changed_while_streaming"] == {"email": 1}


def stored_answer(chat_id) -> str:
    return poll(lambda: Message.objects.filter(chat_id=chat_id, role="assistant").first()).content


def test_regpilot_sse(server):
    tenant, key = guarded_account()
    body = {"messages": [{"role": "user", "content": said()}]}
    with httpx.stream(
        "POST", f"{server.url}/api/ai/chat", json=body, headers={"X-API-Key": key}, timeout=30
    ) as response:
        assert response.status_code == 200
        stream = events(response)
    tokens = [e.json()["content"] for e in stream if e.event == "message" and e.data != "[DONE]"]
    assert_guarded(tenant, tokens, "".join(tokens))


def test_openai_compatible_streaming_and_not(server):
    tenant, key = guarded_account()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)
    chunks = client.chat.completions.create(
        model="demo/balanced", messages=[{"role": "user", "content": said()}], stream=True
    )
    tokens = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert_guarded(tenant, tokens, "".join(tokens))

    answer = client.chat.completions.create(
        model="demo/balanced", messages=[{"role": "user", "content": said("again")}]
    )
    assert EMAIL not in answer.choices[0].message.content
    assert "[REDACTED:email]" in answer.choices[0].message.content


def test_ai_sdk_stream_and_stored_answer(server):
    tenant, key = guarded_account()
    with httpx.stream(
        "POST",
        f"{server.url}/api/chat",
        json={"prompt": said()},
        headers={"X-API-Key": key},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        chunks = [e.json() for e in events(response) if e.data != "[DONE]"]
    tokens = [c["delta"] for c in chunks if c["type"] == "text-delta"]
    chat_id = chunks[0]["messageMetadata"]["chatId"]
    assert_guarded(tenant, tokens, stored_answer(chat_id))


def test_docgen_stream_and_stored_answer(server):
    tenant, key = guarded_account()
    body = {"message": said(), "conversation_id": f"conv-{uuid.uuid4().hex[:8]}"}
    with httpx.stream(
        "POST",
        f"{server.url}/api/v1/chat/stream",
        json=body,
        headers={"X-API-Key": key},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        stream = events(response)
    tokens = [e.json()["token"] for e in stream if e.event == "message"]
    done = stream[-1].json()
    assert done["full_response"] == "".join(tokens)
    assert_guarded(tenant, tokens, stored_answer(done["metadata"]["chat_id"]))


async def ws_exchange(server, key: str, chat, content: str) -> list[dict]:
    url = f"{server.ws_url}/ws/chat?api_key={key}&user_id=user123&chat_id={chat.id}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"content": content}))
        got = []
        while not got or got[-1]["type"] not in ("message_stream_ended", "error"):
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return got


@pytest.mark.asyncio
async def test_websocket_tokens_the_end_event_and_the_stored_answer(server):
    tenant, key = await sync_to_async(guarded_account)()
    chat = await sync_to_async(make_chat)(tenant)
    got = await ws_exchange(server, key, chat, said())
    tokens = [e["token"] for e in got if e["type"] == "message_stream_token"]
    assert got[-1]["type"] == "message_stream_ended"
    assert got[-1]["content"] == "".join(tokens)
    stored = await sync_to_async(stored_answer)(chat.id)
    await sync_to_async(assert_guarded)(tenant, tokens, stored)


@pytest.mark.asyncio
async def test_markup_a_client_sends_is_neutralised_before_it_is_stored_or_sent(server):
    tenant, key = await sync_to_async(guarded_account)(output_redact=[])
    chat = await sync_to_async(make_chat)(tenant)
    payload = f'<img src=x onerror="alert(1)"> hello #{uuid.uuid4().hex[:8]}'
    got = await ws_exchange(server, key, chat, payload)
    received = next(e for e in got if e["type"] == "message_received")
    assert received["content"].startswith("&lt;img src=x onerror=")
    stored_user = await Message.objects.filter(chat=chat, role="user").afirst()
    assert stored_user.content == received["content"]
    # The model saw the neutralised text: the demo model echoes what it was sent.
    assert "&lt;img src=x" in got[-1]["content"] and "<img" not in got[-1]["content"]
    record = await AuditRecord.objects.filter(tenant=tenant).afirst()
    [violation] = [v for v in record.violations if v["rule"] == "markup_injection"]
    assert violation["action"] == "neutralise"
    assert violation["source"] == "message 1 (user)"
    assert "neutralised" in violation["explanation"]
    assert "event-handler attribute" in violation["explanation"]


def test_a_policy_can_refuse_markup_instead(server):
    _, key = guarded_account(markup_action="block")
    body = {"messages": [{"role": "user", "content": "<script>steal()</script> hi"}]}
    response = httpx.post(
        f"{server.url}/api/ai/chat", json=body, headers={"X-API-Key": key}, timeout=30
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "GOVERNOR_REJECTED"
    found = [v for v in error["details"]["violations"] if v["rule"] == "markup_injection"]
    assert [v["action"] for v in found] == ["block", "block"]  # <script> and </script>
    assert "script-like tag" in found[0]["explanation"]
    assert "blocks" in found[0]["explanation"]
