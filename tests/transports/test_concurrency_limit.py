"""A tenant at its plan's concurrent generations is answered 429 CONCURRENCY_LIMIT with
``Retry-After`` in every format, over the wire, whichever transport holds the slots."""

import asyncio
import json

import httpx
import openai
import pytest
import websockets

from billing.models import Plan
from tests.factories import make_chat, make_key, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "[demo:tokens=2000][demo:delay=10] hold the slot"
QUICK = [{"role": "user", "content": "hello"}]


@pytest.fixture
def one_at_once(server):
    make_tenant()
    plan = Plan.objects.create(name="one", display_name="One", max_concurrent_generations=1)
    tenant = make_tenant(plan=plan.name, credits=100)
    return tenant, make_key(tenant)


def assert_envelope(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "CONCURRENCY_LIMIT"


def test_every_http_format_answers_429_while_a_generation_runs(server, one_at_once):
    tenant, key = one_at_once
    headers = {"X-API-Key": key}
    body = {"messages": [{"role": "user", "content": SLOW}]}
    with httpx.stream(
        "POST", f"{server.url}/api/ai/chat", json=body, headers=headers, timeout=30
    ) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # (kept: a dropped iterator closes the response)
        next(lines)  # streaming: its slot is taken
        assert_envelope(
            httpx.post(f"{server.url}/api/ai/chat", json={"messages": QUICK}, headers=headers)
        )
        assert_envelope(
            httpx.post(f"{server.url}/api/chat", json={"prompt": "hello"}, headers=headers)
        )
        for path in ("/api/v1/chat/stream", "/api/v1/chat/generate"):
            assert_envelope(
                httpx.post(f"{server.url}{path}", json={"message": "hello"}, headers=headers)
            )
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="demo/balanced", messages=QUICK)
        assert refused.value.code == "concurrency_limit_exceeded"
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        # Over WebSocket: an error event, and the connection stays open.
        chat = make_chat(tenant)
        url = f"{server.ws_url}/ws/chat?api_key={key}&user_id={chat.end_user.external_id}"
        assert asyncio.run(ws_error(f"{url}&chat_id={chat.id}"))["code"] == "CONCURRENCY_LIMIT"
        stream_url = f"{server.url}{running.headers['x-stream-url']}"
    # Its client left, and the answer runs on in its slot until it is stopped.
    assert (
        httpx.post(
            f"{server.url}/api/ai/chat", json={"messages": QUICK}, headers=headers
        ).status_code
        == 429
    )
    assert httpx.delete(stream_url, headers=headers, timeout=30).json()["status"] == "cancelled"
    response = httpx.post(
        f"{server.url}/api/ai/chat/complete", json={"messages": QUICK}, headers=headers
    )
    for _ in range(20):
        if response.status_code != 429:
            break
        response = httpx.post(
            f"{server.url}/api/ai/chat/complete", json={"messages": QUICK}, headers=headers
        )
    assert response.status_code == 200, response.text


async def ws_error(url: str) -> dict:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"content": "hello"}))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if event["type"] == "error":
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
                return event
            assert event["type"] != "message_stream_started", event


def test_a_websocket_generation_takes_a_slot_from_http(server, one_at_once):
    tenant, key = one_at_once
    chat = make_chat(tenant)
    url = (
        f"{server.ws_url}/ws/chat?api_key={key}"
        f"&user_id={chat.end_user.external_id}&chat_id={chat.id}"
    )

    async def scenario() -> int:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"content": SLOW}))
            while json.loads(await ws.recv())["type"] != "message_stream_token":
                pass
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"{server.url}/api/ai/chat",
                    json={"messages": QUICK},
                    headers={"X-API-Key": key},
                )
            await ws.send(json.dumps({"type": "cancel"}))  # ended before the test's data goes
            while json.loads(await ws.recv())["type"] != "message_stream_ended":
                pass
            return response.status_code

    assert asyncio.run(scenario()) == 429
