"""POST /api/ai/chat (SSE) and /api/ai/chat/complete, over the wire."""

import json
import shutil
import subprocess
from decimal import Decimal

import httpx
import pytest

from billing.models import LedgerEntry
from tests.factories import make_key, make_tenant
from tests.transports.conftest import (
    assert_hold_settled,
    demo_reply,
    error_body,
    events,
    post_events,
    read_then_disconnect,
    unique,
)

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sk_live_a1B2c3D4e5F6g7H8i9J0kL"  # the governor blocks credentials


def body(content: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], **extra}


def test_stream_sends_one_event_per_token_then_usage_then_done(server, account):
    said = unique("Write a haiku about coding")
    before = account.balance()
    _, stream = post_events(
        f"{server.url}/api/ai/chat", body(said, quality="balanced"), account.headers
    )

    tokens = [e for e in stream if e.event == "message" and e.data != "[DONE]"]
    assert len(tokens) > 5
    assert "".join(e.json()["content"] for e in tokens) == demo_reply(said)
    assert [e.event for e in stream[-2:]] == ["usage", "message"]
    assert stream[-1].data == "[DONE]"

    usage = stream[-2].json()
    assert usage["completion_tokens"] == len(tokens)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["model"] == "demo/balanced"
    assert usage["cache_status"] == "MISS"
    assert usage["finish_reason"] == "stop"
    after = account.balance()
    assert Decimal(str(usage["credits_remaining"])) == after
    assert Decimal(str(usage["credits_charged"])) == before - after > 0


def test_stream_headers_as_documented(server, account):
    response, _ = post_events(
        f"{server.url}/api/ai/chat",
        body(unique()),
        {**account.headers, "X-Request-ID": "client-req-1"},
    )
    headers = response.headers
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-request-id"] == "client-req-1"
    assert headers["x-regpilot-model"] == "demo/balanced"
    assert headers["x-cache-status"] == "MISS"
    assert int(headers["x-regpilot-prompt-tokens"]) > 0
    assert Decimal(headers["x-credits-remaining"]) < 1000
    assert "x-governor-validated" in headers
    # Known only at the end of a miss: in the usage event, not in the headers.
    assert "x-credits-charged" not in headers


def test_governor_headers_with_metadata(server, account):
    metadata = {"actionType": "legal_advice", "senderId": "user_12345", "recipientCountry": "US"}
    response, _ = post_events(
        f"{server.url}/api/ai/chat",
        body(unique("Can I sue my employer?"), governorMetadata=metadata),
        account.headers,
    )
    assert response.headers["x-governor-validated"] == "true"
    assert response.headers["x-governor-approved"] == "true"
    assert response.headers["x-governor-risk-level"] in ("low", "medium", "high", "critical")
    assert 0 <= int(response.headers["x-governor-risk-score"]) <= 100
    assert int(response.headers["x-governor-violations"]) >= 0
    assert response.headers["x-governor-audit-id"]


def test_quality_and_model_override_route(server, account):
    cheap, _ = post_events(
        f"{server.url}/api/ai/chat", body(unique(), quality="cheap"), account.headers
    )
    assert cheap.headers["x-regpilot-model"] == "demo/cheap"
    override, _ = post_events(
        f"{server.url}/api/ai/chat",
        body(unique(), quality="cheap", model="demo/frontier"),
        account.headers,
    )
    assert override.headers["x-regpilot-model"] == "demo/frontier"


def test_cache_hit_sends_every_figure_as_headers_and_is_free(server, account):
    request = body(unique("What is 2+2?"), quality="cheap")
    first, first_events = post_events(f"{server.url}/api/ai/chat", request, account.headers)
    assert first.headers["x-cache-status"] == "MISS"
    before = account.balance()

    second, second_events = post_events(f"{server.url}/api/ai/chat", request, account.headers)
    assert second.headers["x-cache-status"] == "HIT"
    assert second.headers["x-credits-charged"] == "0"
    assert (
        int(second.headers["x-regpilot-completion-tokens"])
        == first_events[-2].json()["completion_tokens"]
    )
    assert Decimal(second.headers["x-credits-remaining"]) == before
    assert second_events[-2].json()["cache_status"] == "HIT"
    assert second_events[-2].json()["credits_charged"] == 0
    assert account.balance() == before


def test_cache_control_no_cache_skips_the_cache(server, account):
    request = body(unique("What is 3+3?"))
    post_events(f"{server.url}/api/ai/chat", request, account.headers)
    again, _ = post_events(
        f"{server.url}/api/ai/chat", request, {**account.headers, "Cache-Control": "no-cache"}
    )
    assert again.headers["x-cache-status"] == "MISS"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x" * 20001}]}, "messages[0].content"),
        ({"quality": "premium"}, "quality"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "0.7"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"model": 4}, "model"),
        ({"governorMetadata": "legal"}, "governorMetadata"),
        ({"governorMetadata": {"actionType": "nonsense"}}, "governorMetadata.actionType"),
    ],
)
def test_validation_errors_are_400_naming_the_field(server, account, payload, field):
    request = {"messages": [{"role": "user", "content": "hi"}], **payload}
    if payload == {}:
        request = {}
    response = httpx.post(f"{server.url}/api/ai/chat", json=request, headers=account.headers)
    assert response.status_code == 400
    error = error_body(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_400(server, account, raw):
    response = httpx.post(
        f"{server.url}/api/ai/chat",
        content=raw,
        headers={**account.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert error_body(response)["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "sk_live_nope"}])
def test_bad_or_missing_key_is_401(server, account, headers):
    response = httpx.post(f"{server.url}/api/ai/chat", json=body("hi"), headers=headers)
    assert response.status_code == 401
    assert error_body(response)["code"] == "UNAUTHORIZED"


def test_unknown_model_is_400(server, account):
    response = httpx.post(
        f"{server.url}/api/ai/chat", json=body("hi", model="gpt-9"), headers=account.headers
    )
    assert response.status_code == 400
    assert error_body(response)["code"] == "MODEL_NOT_FOUND"


def test_out_of_credits_is_402(server):
    tenant = make_tenant(credits=0)
    response = httpx.post(
        f"{server.url}/api/ai/chat", json=body(unique()), headers={"X-API-Key": make_key(tenant)}
    )
    assert response.status_code == 402
    assert error_body(response)["code"] == "INSUFFICIENT_CREDITS"


def test_governor_rejection_is_403_with_its_headers(server, account):
    response = httpx.post(
        f"{server.url}/api/ai/chat",
        json=body(f"my key is {SECRET}"),
        headers=account.headers,
    )
    assert response.status_code == 403
    assert error_body(response)["code"] == "GOVERNOR_REJECTED"
    assert response.headers["x-governor-approved"] == "false"


def test_rate_limited_is_429_with_retry_after(server):
    tenant = make_tenant(plan="free", credits=1000)
    headers = {"X-API-Key": make_key(tenant)}
    with httpx.Client(timeout=30) as client:
        for _ in range(40):
            response = client.post(
                f"{server.url}/api/ai/chat/complete", json=body("hi"), headers=headers
            )
            if response.status_code == 429:
                break
    assert response.status_code == 429
    assert error_body(response)["code"] == "RATE_LIMITED"
    assert int(response.headers["retry-after"]) >= 1


def test_upstream_failure_mid_stream_is_an_error_event_then_done(server, account):
    before = account.balance()
    _, stream = post_events(
        f"{server.url}/api/ai/chat", body(unique("[demo:fail-after=3] go")), account.headers
    )
    assert [e.event for e in stream] == ["message"] * 3 + ["error", "usage", "message"]
    error = stream[3].json()
    assert error["code"] == "LLM_CONNECTION_ERROR"
    assert error["retryable"] is True
    assert error["message"]
    assert stream[4].json()["completion_tokens"] == 3
    assert stream[-1].data == "[DONE]"
    assert before - account.balance() == Decimal(str(stream[4].json()["credits_charged"]))


@pytest.mark.parametrize("status", [503, 429])
def test_upstream_error_before_the_first_token_is_502(server, account, status):
    before = account.balance()
    request_id = unique("upstream").replace(" #", "-")
    response = httpx.post(
        f"{server.url}/api/ai/chat",
        json=body(unique(f"[demo:error={status}] go")),
        headers={**account.headers, "X-Request-ID": request_id},
        timeout=30,
    )
    assert response.status_code == 502  # LLM_PROVIDER_ERROR's status, whatever the provider said
    error = error_body(response)
    assert error["code"] == "LLM_PROVIDER_ERROR"
    assert f"HTTP {status}" in error["message"]
    assert response.headers["x-regpilot-model"] == "demo/balanced"
    assert response.headers["x-regpilot-completion-tokens"] == "0"
    assert Decimal(response.headers["x-credits-remaining"]) == account.balance()
    assert_hold_settled(account, request_id, before)


def test_a_client_that_leaves_is_settled_for_the_answer_run_to_its_end(server, account):
    before = account.balance()
    request_id = unique("disconnect").replace(" #", "-")
    read_then_disconnect(
        f"{server.url}/api/ai/chat",
        body("[demo:tokens=40][demo:delay=20] long"),
        {**account.headers, "X-Request-ID": request_id},
        lines=3,
    )
    assert_hold_settled(account, request_id, before)
    entry = LedgerEntry.objects.filter(reference=request_id).exclude(kind="hold").first()
    assert entry is not None


def test_complete_answers_json_with_every_figure_as_a_header(server, account):
    said = unique("Write a haiku about coding")
    before = account.balance()
    response = httpx.post(
        f"{server.url}/api/ai/chat/complete", json=body(said), headers=account.headers, timeout=30
    )
    assert response.status_code == 200
    data = response.json()
    assert data["content"] == demo_reply(said)
    assert data["model"] == "demo/balanced"
    assert data["finish_reason"] == "stop"
    usage = data["usage"]
    after = account.balance()
    headers = response.headers
    assert headers["x-regpilot-model"] == "demo/balanced"
    assert headers["x-cache-status"] == "MISS"
    assert int(headers["x-regpilot-prompt-tokens"]) == usage["prompt_tokens"]
    assert int(headers["x-regpilot-completion-tokens"]) == usage["completion_tokens"]
    assert Decimal(headers["x-credits-charged"]) == before - after
    assert Decimal(headers["x-credits-remaining"]) == after
    assert Decimal(str(usage["credits_remaining"])) == after


def test_complete_upstream_failure_is_502(server, account):
    response = httpx.post(
        f"{server.url}/api/ai/chat/complete",
        json=body(unique("[demo:fail-after=2] go")),
        headers=account.headers,
        timeout=30,
    )
    assert response.status_code == 502
    assert error_body(response)["code"] == "LLM_CONNECTION_ERROR"
    assert int(response.headers["x-regpilot-completion-tokens"]) == 2


def test_complete_client_disconnect_settles_the_hold(server, account):
    before = account.balance()
    request_id = unique("complete-disconnect").replace(" #", "-")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/api/ai/chat/complete",
            json=body("[demo:tokens=400][demo:delay=20] long"),
            headers={**account.headers, "X-Request-ID": request_id},
            timeout=httpx.Timeout(30, read=1),
        )
    assert_hold_settled(account, request_id, before)


# --- RegPilot's documented snippets, host and key changed --------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_documented_curl_example_works_as_printed(server, account):
    command = f"""curl -X POST {server.url}/api/ai/chat \\
  -H "X-API-Key: $REGPILOT_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{
    "messages": [
      {{"role": "user", "content": "Write a haiku about coding"}}
    ],
    "quality": "balanced"
  }}' \\
  --no-buffer"""
    result = subprocess.run(
        ["bash", "-c", command],
        env={"REGPILOT_API_KEY": account.key, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("data: {")]
    text = "".join(json.loads(line[6:]).get("content", "") for line in lines)
    assert text.startswith("This is the offline demo model.")
    assert "event: usage" in result.stdout
    assert result.stdout.rstrip().endswith("data: [DONE]")


def test_documented_python_example_works_with_httpx(server, account):
    # The documented example uses requests(stream=True).iter_content(chunk_size=None); httpx's
    # iter_raw is the same thing.
    printed = []
    with httpx.stream(
        "POST",
        f"{server.url}/api/ai/chat",
        headers={"X-API-Key": account.key, "Content-Type": "application/json"},
        json={
            "messages": [{"role": "user", "content": "Write a haiku about coding"}],
            "quality": "balanced",
        },
        timeout=30,
    ) as response:
        for chunk in response.iter_raw():
            if chunk:
                printed.append(chunk.decode("utf-8"))
    assert response.headers.get("x-regpilot-model") == "demo/balanced"
    assert "data: [DONE]" in "".join(printed)
    # Credits: a header only on a cache hit (a repeat of this request).
    again = httpx.post(
        f"{server.url}/api/ai/chat",
        headers={"X-API-Key": account.key},
        json={
            "messages": [{"role": "user", "content": "Write a haiku about coding"}],
            "quality": "balanced",
        },
        timeout=30,
    )
    assert again.headers.get("x-cache-status") == "HIT"
    assert again.headers.get("x-credits-charged") == "0"


def test_events_parse_with_httpx_sse_line_by_line(server, account):
    with httpx.stream(
        "POST", f"{server.url}/api/ai/chat", json=body(unique()), headers=account.headers
    ) as response:
        names = [event.event for event in events(response)]
    assert names.count("usage") == 1


def test_other_methods_are_405_in_the_envelope(server, account):
    response = httpx.get(f"{server.url}/api/ai/chat", headers=account.headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_body(response)["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "quality": 1}, "quality"),
    ],
)
def test_complete_validation_errors_are_400(server, account, payload, field):
    response = httpx.post(
        f"{server.url}/api/ai/chat/complete", json=payload, headers=account.headers
    )
    assert response.status_code == 400
    assert field in error_body(response)["details"]


def test_complete_bad_key_is_401(server, account):
    response = httpx.post(
        f"{server.url}/api/ai/chat/complete", json=body("hi"), headers={"X-API-Key": "nope"}
    )
    assert response.status_code == 401
    assert error_body(response)["code"] == "UNAUTHORIZED"
