"""POST /v1/chat/completions and GET /v1/models with the official `openai` SDK."""

import time
import uuid

import httpx
import openai
import pytest

from tests.factories import make_key, make_tenant
from tests.live import ON_EACH_SERVER
from tests.transports.conftest import (
    assert_hold_settled,
    demo_reply,
    read_then_disconnect,
    unique,
)

pytestmark = pytest.mark.django_db(transaction=True)


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_non_streaming_completion_with_usage(server, account):
    said = unique("Say hi")
    completion = client(server, account.key).chat.completions.create(
        model="demo/balanced", messages=user(said)
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "demo/balanced"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == demo_reply(said)
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.completion_tokens == len(demo_reply(said).split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@ON_EACH_SERVER
def test_streaming_completion_with_usage_chunk(server, account):
    said = unique("Stream please")
    stream = client(server, account.key).chat.completions.create(
        model="balanced",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": said}]},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo_reply(said)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(finish) - 2  # minus role and finish
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_include_usage_has_no_usage_chunk(server, account):
    chunks = list(
        client(server, account.key).chat.completions.create(
            model="demo/cheap", messages=user(unique()), stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model == "demo/cheap"


def test_max_tokens_cuts_the_answer_with_finish_reason_length(server, account):
    completion = client(server, account.key).chat.completions.create(
        model="demo/balanced", messages=user(unique()), max_completion_tokens=3
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_bearer_or_x_api_key(server, account):
    body = {"model": "balanced", "messages": user(unique())}
    by_header = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=account.headers)
    assert by_header.status_code == 200
    assert by_header.json()["choices"][0]["message"]["content"]


def test_bad_key_is_authentication_error(server, account):
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, "sk_live_wrong").chat.completions.create(
            model="balanced", messages=user("hi")
        )
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "invalid_request_error"


def test_missing_key_is_401(server):
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "balanced", "messages": user("hi")}
    )
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404_model_not_found(server, account):
    with pytest.raises(openai.NotFoundError) as info:
        client(server, account.key).chat.completions.create(model="gpt-9", messages=user("hi"))
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "call_nobody_made"}]},
            "messages[0].tool_call_id",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"},
            "tool_choice",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_invalid_requests_are_400_in_openais_shape(server, account, payload, param):
    body = {"model": "balanced", "messages": user("hi"), **payload}
    body = {key: value for key, value in body.items() if value is not None}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=account.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_sdk_raises_bad_request_error(server, account):
    with pytest.raises(openai.BadRequestError) as info:
        client(server, account.key).chat.completions.create(
            model="balanced", messages=user("hi"), n=3
        )
    assert info.value.param == "n"


def test_out_of_credits_is_402(server):
    key = make_key(make_tenant(credits=0))
    with pytest.raises(openai.APIStatusError) as info:
        client(server, key).chat.completions.create(model="balanced", messages=user(unique()))
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_quota"


def test_governor_rejection_is_403(server, account):
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(server, account.key).chat.completions.create(
            model="balanced", messages=user("my key sk_live_a1B2c3D4e5F6g7H8i9J0kL")
        )
    assert info.value.code == "governor_rejected"


def test_rate_limited_is_rate_limit_error(server):
    sdk = client(server, make_key(make_tenant(plan="free", credits=1000)))
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(40):
            sdk.chat.completions.create(model="balanced", messages=user("hi"))
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1


def _create(server, account, text: str, stream: bool, **extra):
    """One completion, read to its end (a stream too)."""
    result = client(server, account.key).chat.completions.create(
        model="balanced", messages=user(unique(text)), stream=stream, **extra
    )
    return list(result) if stream else result


@pytest.mark.parametrize("stream", [True, False])
def test_upstream_429_before_the_first_token_is_rate_limit_error(server, account, stream):
    before = account.balance()
    request_id = f"oai-{uuid.uuid4().hex}"
    with pytest.raises(openai.RateLimitError) as info:
        _create(
            server,
            account,
            "[demo:error=429] x",
            stream,
            extra_headers={"X-Request-ID": request_id},
        )
    assert info.value.status_code == 429
    assert info.value.code == "upstream_error"
    assert "HTTP 429" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "true"
    assert info.value.response.headers["x-request-id"] == request_id
    assert_hold_settled(account, request_id, before)  # the exchange was finalised


@pytest.mark.parametrize("stream", [True, False])
def test_upstream_500_before_the_first_token_is_internal_server_error(server, account, stream):
    with pytest.raises(openai.InternalServerError) as info:
        _create(server, account, "[demo:error=500] x", stream)
    assert info.value.status_code == 502
    assert info.value.type == "api_error"
    assert info.value.code == "upstream_error"


def test_a_non_retryable_upstream_error_tells_the_sdk_not_to_retry(server, account):
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "balanced", "messages": user(unique("[demo:error=400] x")), "stream": True},
        headers=account.headers,
    )
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "upstream_error"


@ON_EACH_SERVER
def test_a_stream_starts_with_the_engines_first_token(server, account):
    """Waiting for the first event before the status line delays nothing: the first token
    goes out when the engine has it, the others as they come."""
    started = time.monotonic()
    stream = client(server, account.key).chat.completions.create(
        model="balanced", messages=user(unique("[demo:tokens=4][demo:delay=400] x")), stream=True
    )
    arrivals = [
        time.monotonic() - started
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(arrivals) == 4
    assert arrivals[0] < 1.2  # the engine's first token comes after ~0.4 s
    assert arrivals[-1] - arrivals[0] > 0.8  # three more, ~0.4 s apart: streamed


def test_upstream_failure_mid_stream_raises_api_error(server, account):
    stream = client(server, account.key).chat.completions.create(
        model="balanced", messages=user(unique("[demo:fail-after=2] x")), stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert "demo: simulated connection drop" in info.value.message
    assert info.value.code == "upstream_connection_error"
    assert "".join(c.choices[0].delta.content or "" for c in received) == "This is"


def test_upstream_failure_without_streaming_is_502(server, account):
    with pytest.raises(openai.APIStatusError) as info:
        client(server, account.key).chat.completions.create(
            model="balanced", messages=user(unique("[demo:fail-after=2] x"))
        )
    assert info.value.status_code == 502
    assert info.value.type == "api_error"


@ON_EACH_SERVER
def test_a_streaming_client_that_leaves_is_settled_once_the_answer_ends(server, account):
    before = account.balance()
    request_id = f"oai-{uuid.uuid4().hex}"
    read_then_disconnect(
        f"{server.url}/v1/chat/completions",
        {
            "model": "balanced",
            "messages": user("[demo:tokens=40][demo:delay=20] long"),
            "stream": True,
        },
        {**account.headers, "X-Request-ID": request_id},
        lines=5,
    )
    assert_hold_settled(account, request_id, before)


def test_models_lists_configured_models_and_tiers(server, account):
    models = client(server, account.key).models.list()
    ids = {model.id for model in models.data}
    assert {"demo/cheap", "demo/balanced", "demo/frontier"} <= ids
    assert {"cheap", "balanced", "frontier"} <= ids
    assert client(server, account.key).models.retrieve("demo/cheap").owned_by == "demo"
    with pytest.raises(openai.NotFoundError):
        client(server, account.key).models.retrieve("gpt-9")


def test_models_needs_a_key(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk_live_wrong").models.list()


def test_other_methods_are_405_in_openais_shape(server, account):
    response = httpx.get(f"{server.url}/v1/chat/completions", headers=account.headers)
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_non_streaming_client_disconnect_settles_the_hold(server, account):
    before = account.balance()
    request_id = f"oai-{uuid.uuid4().hex}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "balanced", "messages": user("[demo:tokens=400][demo:delay=20] x")},
            headers={**account.headers, "X-Request-ID": request_id},
            timeout=httpx.Timeout(30, read=1),
        )
    assert_hold_settled(account, request_id, before)
