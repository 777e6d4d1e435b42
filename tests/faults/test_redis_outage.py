"""Redis dies under live servers: WebSocket connects are refused cleanly, rate limits
hold in each process, running streams end, and once Redis is back every connect and
group operation works again without restarting anything."""

import asyncio
import contextlib
import json
import time

import httpx
import websockets

from tests.polling import poll
from tests.stream_endings import FORMATS, fan_out, stream

SERVER = {"DEMO_TOKEN_DELAY_MS": "20"}


async def _connect(server, key, query: str = ""):
    """A WebSocket connect: its first event and, if the server closed it, the close code."""
    async with websockets.connect(
        f"{server.ws_url}/ws/chat?user_id=u1{query}", additional_headers={"X-API-Key": key}
    ) as socket:
        event = json.loads(await socket.recv())
        if event["type"] == "error":  # refused: the close follows
            with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
                async with asyncio.timeout(2):
                    await socket.recv()
        return event, socket.close_code


def test_websocket_connects_during_an_outage_get_an_error_and_a_close(stack, serve):
    server = serve(**SERVER)
    key = stack.tenant()
    stack.redis.stop()
    event, close_code = asyncio.run(_connect(server, key))
    assert event["type"] == "error" and event["code"] == "SERVICE_UNAVAILABLE", event
    assert event["retryable"] is True
    assert close_code == 4503
    ready = httpx.get(f"{server.url}/readyz", timeout=20)
    assert ready.status_code == 503
    assert ready.json()["checks"]["channel_layer"] == "error"
    assert ready.json()["checks"]["redis"] == "error"


async def _connects(servers, key, n: int) -> list[str]:
    async def one(i):
        try:
            event, _ = await _connect(servers[i % len(servers)], key)
            return event["type"] if event["type"] != "error" else event["code"]
        except (OSError, websockets.WebSocketException) as exc:
            return repr(exc)

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_after_an_outage_connects_and_groups_work_again_at_once(stack, serve):
    a, b = serve(**SERVER), serve(**SERVER)
    key = stack.tenant()
    # Connections in both processes' pools before the outage, and held across it.
    held = asyncio.run(_connects([a, b], key, 20))
    assert set(held) == {"connection_established"}, held
    stack.redis.stop()
    time.sleep(2)
    stack.redis.start()
    # Redis is back: once each process says so, everything works again.
    for server in (a, b):
        poll(lambda server=server: httpx.get(f"{server.url}/readyz", timeout=10).is_success)

    outcomes = asyncio.run(_connects([a, b], key, 40))
    assert outcomes == ["connection_established"] * 40, outcomes
    ended = asyncio.run(fan_out(a.ws_url, b.ws_url, key))
    assert ended["status"] == "complete"
    assert httpx.get(f"{a.url}/readyz", timeout=10).status_code == 200
    assert httpx.get(f"{b.url}/readyz", timeout=10).status_code == 200


def test_rate_limits_are_enforced_in_each_process_while_redis_is_down(stack, serve):
    server = serve(**SERVER)
    key = stack.tenant(plan="free")  # 10 a minute, bursts of 20
    stack.redis.stop()

    async def burst():
        async with httpx.AsyncClient(timeout=20) as client:
            paths = ["/v1/models", "/api/v1/chats/user/u1"]  # an async view and a DRF one
            return await asyncio.gather(
                *(
                    client.get(server.url + paths[i % 2], headers={"X-API-Key": key})
                    for i in range(30)
                )
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert 20 <= statuses.count(200) <= 21, statuses  # the burst, and no more
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) + statuses.count(200) == 30, statuses
    assert all(int(r.headers["Retry-After"]) > 0 for r in refused)


def test_streams_running_across_an_outage_end_and_their_books_balance(stack, serve):
    server = serve(**SERVER)
    key = stack.tenant()

    async def run():
        async with httpx.AsyncClient() as client:
            tasks = [
                asyncio.create_task(
                    stream(client, server.url, key, fmt, "[demo:tokens=100] outage", deadline=30)
                )
                for fmt in FORMATS
            ]
            await stack.until_admitted(key, len(FORMATS))
            stack.redis.stop()
            endings = await asyncio.gather(*tasks)
            # Cache and idempotency records are missed, not failed on, while Redis is down.
            retried = await client.post(
                f"{server.url}/api/ai/chat",
                json={"messages": [{"role": "user", "content": "again"}]},
                headers={"X-API-Key": key, "Idempotency-Key": "k1"},
                timeout=20,
            )
            return endings, retried

    endings, retried = asyncio.run(run())
    assert [e.kind for e in endings] == ["complete"] * len(FORMATS), endings
    assert all(e.tokens == 100 for e in endings), endings
    assert retried.status_code == 200 and retried.headers["x-cache-status"] == "MISS"
    books = stack.books_when(key, lambda books: books["open holds"] == 0)
    assert books["open holds"] == 0 and books["ledger equals balance"], books
