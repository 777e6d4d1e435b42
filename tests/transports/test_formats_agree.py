"""What the wire formats share means the same in each: one error code for one mistake,
one JSON type for one figure."""

import json

import httpx
import pytest
import websockets

from tests.transports.conftest import error_body, post_events, unique

pytestmark = pytest.mark.django_db(transaction=True)


async def ws_exchange(server, key: str, message: dict) -> list[dict]:
    """The events a WebSocket client gets for one message, up to its end or error."""
    url = f"{server.ws_url}/ws/chat?user_id=formats&api_key={key}"
    received = []
    async with websockets.connect(url, open_timeout=10) as ws:
        assert json.loads(await ws.recv())["type"] == "connection_established"
        await ws.send(json.dumps(message))
        while True:
            event = json.loads(await ws.recv())
            received.append(event)
            if event["type"] in ("message_stream_ended", "error"):
                return received


@pytest.mark.asyncio
async def test_an_unknown_quality_is_one_code_over_http_and_websocket(server, account):
    http = httpx.post(
        f"{server.url}/api/ai/chat",
        json={"messages": [{"role": "user", "content": "hi"}], "quality": "premium"},
        headers=account.headers,
    )
    assert http.status_code == 400
    over_http = error_body(http)

    *_, over_ws = await ws_exchange(server, account.key, {"content": "hi", "quality": "premium"})

    assert over_ws["type"] == "error"
    assert over_http["code"] == over_ws["code"] == "VALIDATION_ERROR"
    assert "quality" in over_http["details"] and "quality" in over_ws["details"]


@pytest.mark.asyncio
async def test_credit_figures_are_json_numbers_in_every_format(server, account):
    figures = {}

    *_, ended = await ws_exchange(server, account.key, {"content": unique()})
    figures["ws"] = (ended["credits_charged"], ended["credits_remaining"])

    _, stream = post_events(
        f"{server.url}/api/ai/chat",
        {"messages": [{"role": "user", "content": unique()}]},
        account.headers,
    )
    usage = next(event.json() for event in stream if event.event == "usage")
    figures["regpilot stream"] = (usage["credits_charged"], usage["credits_remaining"])

    whole = httpx.post(
        f"{server.url}/api/ai/chat/complete",
        json={"messages": [{"role": "user", "content": unique()}]},
        headers=account.headers,
        timeout=30,
    ).json()["usage"]
    figures["regpilot complete"] = (whole["credits_charged"], whole["credits_remaining"])

    _, stream = post_events(
        f"{server.url}/api/v1/chat/stream", {"message": unique()}, account.headers
    )
    done = next(event.json() for event in stream if event.event == "done")["metadata"]
    figures["docgen"] = (done["credits_charged"], done["credits_remaining"])

    _, stream = post_events(f"{server.url}/api/chat", {"prompt": unique()}, account.headers)
    chunks = [event.json() for event in stream if event.data != "[DONE]"]
    metadata = next(c for c in chunks if c["type"] == "message-metadata")["messageMetadata"]
    figures["ai sdk"] = (metadata["creditsCharged"], metadata["creditsRemaining"])

    for name, (charged, remaining) in figures.items():
        assert type(charged) is float and type(remaining) is float, (name, charged, remaining)
        assert charged > 0 and remaining > 0, name
