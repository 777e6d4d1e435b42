"""Fixtures and helpers for the HTTP streaming transports, tested over the wire against
the live daphne server (``server`` fixture)."""

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource

from billing.models import LedgerEntry
from tests.factories import Account
from tests.polling import poll


@pytest.fixture
def account(server, account) -> Account:
    """The test's account (tests/conftest.py), committed where the live server sees it."""
    return account


@pytest.fixture(scope="session")
def keepalive_process(live_server_process, tmp_path_factory):
    """A second server whose SSE keep-alive interval is 0.2 s and whose model times out
    after 3 s of silence (same test database)."""
    from tests.live import start_server

    server = start_server(
        tmp_path_factory.mktemp("keepalive"), SSE_KEEPALIVE_SECONDS="0.2", LLM_TIMEOUT_SECONDS="3"
    )
    yield server
    server.stop()


@pytest.fixture
def keepalive_server(keepalive_process, server):
    return keepalive_process


@pytest.fixture(scope="session")
def slow_servers(live_server_process, tmp_path_factory):
    """Two more server processes on the test database (and on Redis, when set) whose demo
    model takes a while, so a second request meets the first still generating."""
    from tests.live import start_server

    servers = [
        start_server(tmp_path_factory.mktemp("slow"), DEMO_TOKEN_DELAY_MS="20") for _ in range(2)
    ]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def slow(slow_servers, server):
    return slow_servers


def unique(text: str = "hello") -> str:
    """A message no earlier run has sent (the response cache outlives test databases)."""
    return f"{text} #{uuid.uuid4().hex[:8]}"


def demo_reply(said: str) -> str:
    return f"This is the offline demo model. You said: {said}"


def events(response: httpx.Response) -> list[Any]:
    """Every server-sent event of a (streamed) response, via httpx-sse."""
    return list(EventSource(response).iter_sse())


def post_events(url: str, body: dict, headers: dict[str, str]) -> tuple[httpx.Response, list]:
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        return response, events(response)


def read_then_disconnect(url: str, body: dict, headers: dict[str, str], *, lines: int) -> None:
    """Start a stream, read ``lines`` non-empty lines of it, then close the connection."""
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        seen = 0
        for line in response.iter_lines():
            if line.strip():
                seen += 1
            if seen >= lines:
                break
    # Leaving the block closes the connection: the server sees http.disconnect.


def assert_hold_settled(account: Account, request_id: str, before: Decimal) -> None:
    """The request's credit hold was closed, and the balance fell by less than the hold."""

    def closed():
        kinds = set(LedgerEntry.objects.filter(reference=request_id).values_list("kind", flat=True))
        return kinds if LedgerEntry.Kind.HOLD in kinds and len(kinds) > 1 else None

    kinds = poll(closed)
    assert kinds & {LedgerEntry.Kind.SETTLE, LedgerEntry.Kind.RELEASE}
    hold = -LedgerEntry.objects.get(reference=request_id, kind=LedgerEntry.Kind.HOLD).amount
    spent = before - account.balance()
    assert Decimal(0) <= spent < hold


def error_body(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    return json.loads(response.content)["error"]
