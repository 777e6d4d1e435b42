"""Keep-alive comments while the model is slow (a server with SSE_KEEPALIVE_SECONDS=0.2)."""

import uuid

import httpx
import openai
import pytest

from tests.transports.conftest import assert_hold_settled, events, unique

pytestmark = pytest.mark.django_db(transaction=True)


def test_keepalive_comments_while_the_first_token_is_late(keepalive_server, account):
    before = account.balance()
    request_id = f"ka-{uuid.uuid4().hex}"
    comments = 0
    with httpx.stream(
        "POST",
        f"{keepalive_server.url}/api/ai/chat",
        json={"messages": [{"role": "user", "content": unique("[demo:stall] wait")}]},
        headers={**account.headers, "X-Request-ID": request_id},
        timeout=10,
    ) as response:
        # The headers came at once, before any token.
        assert response.headers["x-regpilot-model"] == "demo/balanced"
        for line in response.iter_lines():
            assert not line.startswith("data:")
            if line == ": keep-alive":
                comments += 1
            if comments == 3:
                break
    assert comments == 3
    # Nobody reads the stream any more, and it still ends: at the model's timeout.
    assert_hold_settled(account, request_id, before)


def test_keepalives_between_slow_tokens_do_not_disturb_sse_parsers(keepalive_server, account):
    with httpx.stream(
        "POST",
        f"{keepalive_server.url}/api/v1/chat/stream",
        json={"message": unique("[demo:tokens=3][demo:delay=500] slow")},
        headers=account.headers,
        timeout=10,
    ) as response:
        raw = []
        stream = events(_Recording(response, raw))
    assert ": keep-alive" in "".join(raw)
    assert [event.event for event in stream] == ["message"] * 3 + ["done"]
    assert stream[-1].json()["full_response"] == "lorem ipsum dolor"


def test_openai_sdk_ignores_keepalives(keepalive_server, account):
    sdk = openai.OpenAI(base_url=f"{keepalive_server.url}/v1", api_key=account.key, max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model="balanced",
            messages=[{"role": "user", "content": unique("[demo:tokens=2][demo:delay=500] x")}],
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "lorem ipsum"


def test_openai_stream_starts_with_keepalives_when_the_first_token_is_late(
    keepalive_server, account
):
    """The status line waits for the first event only for one keep-alive interval."""
    before = account.balance()
    request_id = f"ka-{uuid.uuid4().hex}"
    comments = 0
    with httpx.stream(
        "POST",
        f"{keepalive_server.url}/v1/chat/completions",
        json={
            "model": "balanced",
            "messages": [{"role": "user", "content": unique("[demo:stall] wait")}],
            "stream": True,
        },
        headers={**account.headers, "X-Request-ID": request_id},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            assert not line.startswith("data:")
            if line == ": keep-alive":
                comments += 1
            if comments == 2:
                break
    assert comments == 2
    assert_hold_settled(account, request_id, before)


class _Recording:
    """A response whose text is also kept in ``raw`` (httpx-sse reads iter_text)."""

    def __init__(self, response: httpx.Response, raw: list[str]) -> None:
        self._response = response
        self._raw = raw
        self.headers = response.headers

    def iter_text(self):
        for text in self._response.iter_text():
            self._raw.append(text)
            yield text
