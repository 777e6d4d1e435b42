"""PostgreSQL stops under a live server: requests get 503, every stream ends for its
client within seconds, and once the database is back nothing is lost or left open."""

import asyncio
import json
import time

import httpx
import pytest
import websockets

from tests.polling import poll
from tests.stream_endings import FORMATS, SSE_FORMATS, stream

# A stream's end waits this long on the database before the client is told; requests wait
# this long for a connection. Short, so the outages here can be short.
SERVER = {"STREAM_END_WAIT_SECONDS": "1", "DATABASE_POOL_TIMEOUT": "2", "DEMO_TOKEN_DELAY_MS": "20"}
STORED = ("docgen", "aisdk", "ws")  # the formats that keep their exchange in a chat


def _no_open_holds(books: dict) -> bool:
    return books["open holds"] == 0


async def _streams_across_an_outage(server, key, stack, *, outage: float):
    """One stream per format (2 s of tokens), PostgreSQL stopped once they all stream."""
    async with httpx.AsyncClient() as client:
        tasks = [
            asyncio.create_task(
                stream(client, server.url, key, fmt, "[demo:tokens=100] outage", deadline=30)
            )
            for fmt in FORMATS
        ]
        await stack.until_admitted(key, len(FORMATS))
        stack.pg.stop()
        stopped = time.monotonic()
        done, _ = await asyncio.wait(tasks, timeout=outage)
        ended_during = {task.result().format for task in done}
        stack.pg.start()
        endings = await asyncio.gather(*tasks)
    return endings, ended_during, stopped


def test_streams_whose_end_meets_an_outage_end_with_an_error_and_are_saved_later(pg_stack, serve):
    server = serve(**SERVER)
    key = pg_stack.tenant()
    endings, ended_during, _ = asyncio.run(
        _streams_across_an_outage(server, key, pg_stack, outage=8)
    )

    for ending in endings:  # told at once, in its own format, with the end marker
        assert ending.kind == "error", (ending.format, ending.kind, ending.events[-3:])
        assert ending.code.upper() == "SERVICE_UNAVAILABLE", ending
        assert ending.tokens == 100, ending  # every token reached the client first
    assert ended_during == set(FORMATS)  # before the database came back
    books = pg_stack.books_when(key, _no_open_holds)  # settled in the background since
    assert books["open holds"] == 0
    assert books["ledger equals balance"]
    assert books["messages"].get("assistant complete") == len(STORED), books


def test_requests_during_an_outage_get_503_with_retry_after(pg_stack, serve):
    server = serve(**SERVER)
    key = pg_stack.tenant()
    pg_stack.pg.stop()
    try:
        responses, (event, close_code) = asyncio.run(_requests_and_a_connect(server, key))
    finally:
        pg_stack.pg.start()

    for name, response in responses.items():
        assert response.status_code == 503, (name, response.text)
        if name == "readyz":
            assert response.json()["checks"]["database"] == "error"
            continue
        assert int(response.headers["Retry-After"]) > 0, name
        code = "service_unavailable" if name == "openai" else "SERVICE_UNAVAILABLE"
        assert response.json()["error"]["code"] == code, (name, response.text)
    assert event["type"] == "error" and event["code"] == "SERVICE_UNAVAILABLE", event
    assert close_code == 4503
    # The pool reconnects within about a second.
    poll(lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200, timeout=5)


async def _requests_and_a_connect(server, key):
    """Every streaming format, the REST API and the readiness probe, and a WebSocket."""
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(timeout=20) as client:
        requests = {
            fmt: client.post(server.url + path, json=body("hello"), headers=headers)
            for fmt, (path, body) in SSE_FORMATS.items()
        }
        requests["rest"] = client.get(f"{server.url}/api/v1/chats/user/u1", headers=headers)
        requests["readyz"] = client.get(f"{server.url}/readyz")
        *answers, connected = await asyncio.gather(*requests.values(), _ws_connect(server, key))
    return dict(zip(requests, answers, strict=True)), connected


async def _ws_connect(server, key):
    async with websockets.connect(
        f"{server.ws_url}/ws/chat?user_id=u1", additional_headers={"X-API-Key": key}
    ) as socket:
        event = json.loads(await socket.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await socket.recv()
        return event, socket.close_code
