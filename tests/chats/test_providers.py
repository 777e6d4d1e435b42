"""The LLM providers, each against a fake upstream over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from chats.providers import (
    AnthropicProvider,
    CompletionRequest,
    DemoProvider,
    LLMConnectionError,
    LLMProviderError,
    LLMTimeoutError,
    OpenAICompatibleProvider,
    Provider,
    ProviderError,
    StreamEnd,
    TokenDelta,
    aclose_shared_client,
    estimate_prompt_tokens,
    estimate_tokens,
    http_provider,
)
from chats.providers.wire import SSEParser
from tests.fakes.upstream import (
    FakeUpstream,
    expected_text,
    fake_upstream,  # noqa: F401 (the fixture, for the fake's own tests)
    prompt_tokens_for,
    unused_port,
)

KEY = "sk-test-0123456789abcdef-SECRET"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the world"},
]


class Outcome:
    """What a stream produced: its tokens, then either a StreamEnd or an error."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.end: StreamEnd | None = None
        self.error: ProviderError | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)


async def run(provider: Provider, request: CompletionRequest) -> Outcome:
    outcome = Outcome()
    stream = provider.stream(request)
    try:
        async for item in stream:
            assert outcome.end is None, "nothing may follow the StreamEnd"
            if isinstance(item, TokenDelta):
                outcome.tokens.append(item.text)
            else:
                outcome.end = item
    except ProviderError as exc:
        outcome.error = exc
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return outcome


def ask(model: str = "fake-model", **kwargs: object) -> CompletionRequest:
    return CompletionRequest(model=model, messages=list(MESSAGES), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream.running(api_key=KEY) as up:
        yield up


@pytest_asyncio.fixture
async def shared() -> AsyncIterator[None]:
    """The providers' pooled client of this test's loop, closed afterwards."""
    yield
    await aclose_shared_client()


def openai(up: FakeUpstream, **kwargs: object) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(up.openai_base_url, KEY, **kwargs)  # type: ignore[arg-type]


def anthropic(up: FakeUpstream, **kwargs: object) -> AnthropicProvider:
    return AnthropicProvider(KEY, base_url=up.base_url, **kwargs)  # type: ignore[arg-type]


def assert_key_hidden(error: ProviderError) -> None:
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in error.message


# --- interface ---------------------------------------------------------------------------


def test_estimate_tokens_is_about_four_characters_a_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100


def test_a_prompts_estimate_is_the_sum_of_its_messages() -> None:
    messages = [
        {"role": "system", "content": "abcde"},  # 2
        {"role": "user", "content": ""},  # 0
        {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": "{}"}]},
        {"role": "user", "content": "x" * 400},  # 100
    ]
    assert estimate_prompt_tokens(messages) == 2 + 0 + estimate_tokens("f{}") + 100


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (502, True), (503, True), (529, True), (400, False), (401, False),
     (404, False), (None, False)],
)  # fmt: skip
def test_provider_error_is_retryable_for_429_and_5xx(status: int | None, retryable: bool) -> None:
    error = LLMProviderError("boom", status=status)
    assert error.retryable is retryable
    assert error.status == status
    assert error.code == "LLM_PROVIDER_ERROR"


def test_error_codes_and_retryability_follow_the_spec() -> None:
    assert (LLMConnectionError("x").code, LLMConnectionError("x").retryable) == (
        "LLM_CONNECTION_ERROR",
        True,
    )
    assert (LLMTimeoutError("x").code, LLMTimeoutError("x").retryable) == ("LLM_TIMEOUT", True)
    assert LLMProviderError("x", status=400, retryable=True).retryable is True
    assert str(LLMTimeoutError("slow")) == "slow"


# --- demo --------------------------------------------------------------------------------


def demo_ask(content: str, **kwargs: object) -> CompletionRequest:
    messages = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": content}]
    return CompletionRequest(model="demo", messages=messages, **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_demo_replies_deterministically_from_the_last_user_message() -> None:
    first = await run(DemoProvider(), demo_ask("hello   world"))
    second = await run(DemoProvider(), demo_ask("hello   world"))
    assert first.text == "This is the offline demo model. You said: hello world"
    assert first.tokens == second.tokens
    assert first.end == second.end
    assert first.tokens[1] == " is"  # each token keeps its leading space
    assert len(first.tokens) > 5


@pytest.mark.asyncio
async def test_demo_reports_usage_and_stop() -> None:
    request = demo_ask("hello world")
    outcome = await run(DemoProvider(), request)
    assert outcome.end == StreamEnd(
        finish_reason="stop",
        prompt_tokens=estimate_prompt_tokens(request.messages),
        completion_tokens=len(outcome.tokens),
    )


@pytest.mark.asyncio
async def test_demo_echo_is_shortened_and_directives_removed() -> None:
    outcome = await run(DemoProvider(), demo_ask("[demo:delay=0] " + "word " * 200))
    assert "[demo" not in outcome.text
    assert outcome.text.endswith("…")
    assert len(outcome.text) < 300


@pytest.mark.asyncio
async def test_demo_respects_max_tokens() -> None:
    outcome = await run(DemoProvider(), demo_ask("hello world", max_tokens=3))
    assert outcome.text == "This is the"
    assert outcome.end is not None
    assert (outcome.end.finish_reason, outcome.end.completion_tokens) == ("length", 3)


@pytest.mark.asyncio
async def test_demo_tokens_directive_emits_exactly_n_tokens() -> None:
    outcome = await run(DemoProvider(), demo_ask("[demo:tokens=250] go"))
    assert len(outcome.tokens) == 250
    assert outcome.end is not None
    assert outcome.end.completion_tokens == 250
    assert outcome.end.finish_reason == "stop"


@pytest.mark.asyncio
async def test_demo_huge_token_count_is_cut_by_max_tokens_without_building_it() -> None:
    outcome = await run(DemoProvider(), demo_ask("[demo:tokens=1000000000] go", max_tokens=3))
    assert outcome.text == "lorem ipsum dolor"
    assert outcome.end is not None
    assert (outcome.end.finish_reason, outcome.end.completion_tokens) == ("length", 3)


@pytest.mark.asyncio
async def test_demo_fail_after_raises_connection_error_after_n_tokens() -> None:
    outcome = await run(DemoProvider(), demo_ask("[demo:fail-after=2] hi"))
    assert outcome.tokens == ["This", " is"]
    assert isinstance(outcome.error, LLMConnectionError)
    assert outcome.error.retryable
    assert outcome.end is None


@pytest.mark.asyncio
async def test_demo_fail_after_beyond_the_reply_fails_after_its_last_token() -> None:
    outcome = await run(DemoProvider(), demo_ask("[demo:fail-after=999] hi"))
    assert outcome.text == "This is the offline demo model. You said: hi"
    assert isinstance(outcome.error, LLMConnectionError)


@pytest.mark.asyncio
async def test_demo_stall_never_sends_a_token() -> None:
    tokens: list[str] = []

    async def consume() -> None:
        async for item in DemoProvider().stream(demo_ask("[demo:stall] hi")):
            tokens.append(item.text)  # type: ignore[union-attr]

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consume(), timeout=0.2)
    assert tokens == []


@pytest.mark.asyncio
async def test_demo_stall_after_stops_after_n_tokens() -> None:
    tokens: list[str] = []

    async def consume() -> None:
        async for item in DemoProvider().stream(demo_ask("[demo:stall-after=3] hi")):
            tokens.append(item.text)  # type: ignore[union-attr]

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consume(), timeout=0.2)
    assert tokens == ["This", " is", " the"]


@pytest.mark.asyncio
async def test_demo_delay_directive_paces_tokens() -> None:
    started = time.perf_counter()
    outcome = await run(DemoProvider(), demo_ask("[demo:tokens=5][demo:delay=30] go"))
    assert len(outcome.tokens) == 5
    assert time.perf_counter() - started >= 0.14


@pytest.mark.asyncio
async def test_demo_constructor_delay_is_overridden_by_the_directive() -> None:
    started = time.perf_counter()
    await run(DemoProvider(token_delay=5.0), demo_ask("[demo:tokens=3][demo:delay=0] go"))
    assert time.perf_counter() - started < 1.0


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "retryable"), [(429, True), (503, True), (400, False)])
async def test_demo_error_directive_raises_provider_error_first(
    status: int, retryable: bool
) -> None:
    outcome = await run(DemoProvider(), demo_ask(f"[demo:error={status}] hi"))
    assert outcome.tokens == []
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (status, retryable)


@pytest.mark.asyncio
async def test_demo_only_reads_directives_of_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "[demo:error=500] earlier"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "now"},
    ]
    outcome = await run(DemoProvider(), CompletionRequest(model="demo", messages=messages))
    assert outcome.error is None
    assert outcome.text == "This is the offline demo model. You said: now"


# --- OpenAI-compatible -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_openai_streams_the_full_reply_with_upstream_usage(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask(temperature=0.2))
    body = upstream.requests[-1]
    assert outcome.error is None
    assert outcome.tokens == ["Hello", " from", " the", " fake", " upstream"]
    assert outcome.end == StreamEnd("stop", prompt_tokens_for(body), 5)
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2
    assert "max_tokens" not in body
    assert upstream.received[-1].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.asyncio
async def test_openai_max_tokens_cut_reports_length(upstream: FakeUpstream, shared: None) -> None:
    outcome = await run(openai(upstream), ask(max_tokens=3))
    assert upstream.requests[-1]["max_tokens"] == 3
    assert outcome.text == expected_text(3)
    assert outcome.end is not None
    assert (outcome.end.finish_reason, outcome.end.completion_tokens) == ("length", 3)


@pytest.mark.asyncio
async def test_openai_estimates_usage_when_upstream_reports_none(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask("tokens-12+no-usage"))
    assert outcome.text == expected_text(12)
    assert outcome.end == StreamEnd(
        "stop", estimate_prompt_tokens(MESSAGES), estimate_tokens(expected_text(12))
    )


@pytest.mark.asyncio
async def test_openai_drop_mid_stream_is_a_connection_error_after_the_tokens_that_came(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask("fail-after-3"))
    assert outcome.text == expected_text(3)
    assert isinstance(outcome.error, LLMConnectionError)
    assert outcome.error.retryable
    assert outcome.end is None


@pytest.mark.asyncio
async def test_openai_body_ending_without_done_is_a_connection_error(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask("eof-after-2"))
    assert outcome.text == expected_text(2)
    assert isinstance(outcome.error, LLMConnectionError)


@pytest.mark.asyncio
async def test_openai_connection_closed_without_answer_is_a_connection_error(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask("drop"))
    assert outcome.tokens == []
    assert isinstance(outcome.error, LLMConnectionError)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 500, 503, 529])
async def test_openai_overload_and_server_errors_are_retryable(
    upstream: FakeUpstream, shared: None, status: int
) -> None:
    outcome = await run(openai(upstream), ask(f"status-{status}"))
    assert outcome.tokens == []
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (status, True)
    assert f"HTTP {status}" in str(outcome.error)


@pytest.mark.asyncio
async def test_openai_bad_request_is_not_retryable_and_keeps_upstream_message(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask("status-400"))
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (400, False)
    assert "Invalid request." in str(outcome.error)


@pytest.mark.asyncio
async def test_openai_mid_stream_error_object_is_a_provider_error(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream), ask("error-after-2"))
    assert outcome.text == expected_text(2)
    assert isinstance(outcome.error, LLMProviderError)
    assert outcome.error.retryable
    assert "server had an error" in str(outcome.error)


@pytest.mark.asyncio
async def test_openai_no_answer_is_a_timeout(upstream: FakeUpstream, shared: None) -> None:
    started = time.perf_counter()
    outcome = await run(openai(upstream, timeout=0.3), ask("hang"))
    assert isinstance(outcome.error, LLMTimeoutError)
    assert outcome.error.retryable
    assert time.perf_counter() - started < 3


@pytest.mark.asyncio
async def test_openai_stall_mid_stream_is_a_timeout_after_the_tokens_that_came(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(openai(upstream, timeout=0.3), ask("hang-after-2"))
    assert outcome.text == expected_text(2)
    assert isinstance(outcome.error, LLMTimeoutError)


@pytest.mark.asyncio
async def test_openai_connection_refused_is_a_connection_error(shared: None) -> None:
    provider = OpenAICompatibleProvider(f"http://127.0.0.1:{unused_port()}/v1", KEY)
    outcome = await run(provider, ask())
    assert isinstance(outcome.error, LLMConnectionError)
    assert outcome.error.retryable
    assert_key_hidden(outcome.error)


@pytest.mark.asyncio
async def test_openai_api_key_never_appears_in_error_messages(
    upstream: FakeUpstream, shared: None
) -> None:
    # The fake's 401 quotes the key it was sent, as a careless upstream might.
    with FakeUpstream.running(api_key="another-key") as strict:
        outcome = await run(openai(strict), ask())
        assert strict.received[-1].headers["authorization"] == f"Bearer {KEY}"
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (401, False)
    assert "***" in str(outcome.error)
    assert_key_hidden(outcome.error)
    for model in ("status-500", "fail-after-1", "drop", "error-after-1"):
        outcome = await run(openai(upstream), ask(model))
        assert outcome.error is not None
        assert_key_hidden(outcome.error)


@pytest.mark.asyncio
async def test_openai_without_key_sends_no_authorization(shared: None) -> None:
    with FakeUpstream.running() as up:
        outcome = await run(OpenAICompatibleProvider(up.openai_base_url, None), ask())
        assert "authorization" not in up.received[-1].headers
    assert outcome.text == expected_text(5)


@pytest.mark.asyncio
async def test_openai_reuses_one_pooled_connection(upstream: FakeUpstream, shared: None) -> None:
    provider = openai(upstream)
    for _ in range(3):
        outcome = await run(provider, ask())
        assert outcome.end is not None
    assert upstream.connections_opened == 1


@pytest.mark.asyncio
async def test_openai_stream_closed_early_releases_its_connection(
    upstream: FakeUpstream, shared: None
) -> None:
    provider = openai(upstream)
    stream = provider.stream(ask("tokens-500+delay-20"))
    first = await anext(stream)
    started = time.perf_counter()
    await stream.aclose()  # type: ignore[attr-defined]
    assert first == TokenDelta("Hello")
    assert time.perf_counter() - started < 2  # not the ten seconds the stream would take
    outcome = await run(provider, ask())  # the pool is usable, the lease was returned
    assert outcome.end is not None


@pytest.mark.asyncio
async def test_openai_cancelled_consumer_stops_the_upstream_request(
    upstream: FakeUpstream, shared: None
) -> None:
    tokens: list[str] = []
    first_token = asyncio.Event()

    async def consume() -> None:
        async for item in openai(upstream).stream(ask("tokens-500+delay-20")):
            tokens.append(item.text)  # type: ignore[union-attr]
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < len(tokens) < 50
    outcome = await run(openai(upstream), ask())
    assert outcome.end is not None


@contextlib.asynccontextmanager
async def canned(body: bytes, content_type: str) -> AsyncIterator[str]:
    """An upstream on this loop answering every POST with ``body``: its base URL."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"content-type": content_type})

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_openai_tokens_arrive_as_they_are_sent(upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        provider = openai(upstream, session=session)
        started = time.perf_counter()
        arrivals: list[float] = []
        async for item in provider.stream(ask("tokens-4+delay-150")):
            arrivals.append(time.perf_counter() - started)
            assert isinstance(item, TokenDelta | StreamEnd)
    # 150 ms between tokens: they came one by one, not all at the end.
    assert arrivals[-2] - arrivals[0] >= 0.35


@pytest.mark.asyncio
async def test_a_large_read_is_parsed_in_slices_so_its_first_events_go_on_at_once(
    upstream: FakeUpstream, shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast upstream's answer piles up while the loop is busy; the parser takes what
    one read returned a slice at a time, so its first token does not wait for the rest."""
    fed: list[int] = []
    reads: list[int] = []
    feed, readany = http_provider.SSEParser.feed, aiohttp.StreamReader.readany

    def counted_feed(self, chunk: bytes):
        fed.append(len(chunk))
        return feed(self, chunk)

    async def counted_read(self) -> bytes:
        read = await readany(self)
        reads.append(len(read))
        return read

    monkeypatch.setattr(http_provider.SSEParser, "feed", counted_feed)
    monkeypatch.setattr(aiohttp.StreamReader, "readany", counted_read)
    stream = openai(upstream).stream(ask("tokens-3000"))
    first = await anext(stream)
    time.sleep(0.3)  # the loop is busy: the rest of the answer arrives meanwhile
    outcome = await run_rest(stream)
    assert isinstance(first, TokenDelta)
    assert len(outcome.tokens) == 2999 and outcome.end is not None
    assert max(reads) > 64 * 1024  # one read brought much of the answer at once
    assert max(fed) <= 16 * 1024  # and the parser took it a slice at a time


async def run_rest(stream) -> Outcome:
    outcome = Outcome()
    async for item in stream:
        if isinstance(item, TokenDelta):
            outcome.tokens.append(item.text)
        else:
            outcome.end = item
    return outcome


@pytest.mark.asyncio
async def test_openai_accepts_a_non_streaming_json_answer() -> None:
    completion = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }  # fmt: skip
    async with canned(json.dumps(completion).encode(), "application/json") as url:
        outcome = await run(OpenAICompatibleProvider(f"{url}/v1", None), ask())
    assert outcome.tokens == ["Hi!"]
    assert outcome.end == StreamEnd("stop", 7, 2)


@pytest.mark.asyncio
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
async def test_openai_reads_events_of_any_length_and_line_ending(newline: str) -> None:
    long = "x" * 300_000  # one event longer than aiohttp's own line reader takes
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": long}}]},
        {"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]  # fmt: skip
    events = [f": comment{newline}data: {json.dumps(c)}{newline}{newline}" for c in chunks]
    raw = "".join(events) + f"data: [DONE]{newline}{newline}"
    async with canned(raw.encode(), "text/event-stream") as url:
        outcome = await run(OpenAICompatibleProvider(f"{url}/v1", None), ask())
    assert outcome.tokens == [long, "!"]
    assert outcome.end == StreamEnd("stop", 3, 2)


_EVENTS = (
    b': a comment\r\nevent: delta\r\ndata: {"a": 1}\r\n\r\n'
    b"data: two\rdata:  lines\r\r"
    b"data: \xc3\xa9t\xc3\xa9\n\n"
    b"id: 7\nretry: 10\n\n"  # no data: no event
    b"data: cut off at the end"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(_EVENTS)])
def test_sse_events_are_the_same_however_the_body_is_cut_into_reads(size: int) -> None:
    parser = SSEParser()
    events = []
    for start in range(0, len(_EVENTS), size):
        events += parser.feed(_EVENTS[start : start + size])
    # A CR that ends a read may be half a CRLF: one line end either way, never a blank line.
    assert events == [("delta", '{"a": 1}'), ("message", "two\n lines"), ("message", "été")]


@pytest.mark.asyncio
async def test_provider_runs_against_a_fake_served_on_the_same_loop(shared: None) -> None:
    async with FakeUpstream("tokens-7") as up:
        outcome = await run(OpenAICompatibleProvider(up.openai_base_url, None), ask())
        anthropic_outcome = await run(AnthropicProvider(None, base_url=up.base_url), ask())
    assert outcome.text == anthropic_outcome.text == expected_text(7)


# --- Anthropic ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_anthropic_streams_the_full_reply_with_upstream_usage(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(anthropic(upstream), ask())
    body = upstream.requests[-1]
    headers = upstream.received[-1].headers
    assert outcome.error is None
    assert outcome.text == expected_text(5)  # the pings in the stream were ignored
    assert outcome.end == StreamEnd("stop", prompt_tokens_for(body), 5)
    assert body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": "Say hello to the world"}]
    assert (body["max_tokens"], body["stream"]) == (1024, True)
    assert (headers["x-api-key"], headers["anthropic-version"]) == (KEY, "2023-06-01")
    assert "authorization" not in headers


@pytest.mark.asyncio
async def test_anthropic_max_tokens_cut_reports_length(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(anthropic(upstream), ask("tokens-10", max_tokens=4))
    assert upstream.requests[-1]["max_tokens"] == 4
    assert outcome.text == expected_text(4)
    assert outcome.end is not None
    assert (outcome.end.finish_reason, outcome.end.completion_tokens) == ("length", 4)


@pytest.mark.asyncio
async def test_anthropic_body_merges_same_role_turns_and_clamps_temperature(
    upstream: FakeUpstream, shared: None
) -> None:
    messages = [
        {"role": "system", "content": "One."},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "system", "content": "Two."},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    request = CompletionRequest(model="m", messages=messages, temperature=1.6)
    outcome = await run(anthropic(upstream), request)
    body = upstream.requests[-1]
    assert outcome.end is not None
    assert body["system"] == "One.\n\nTwo."
    assert body["messages"] == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert body["temperature"] == 1.0


@pytest.mark.asyncio
async def test_anthropic_drop_mid_stream_is_a_connection_error_after_the_tokens_that_came(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(anthropic(upstream), ask("fail-after-3"))
    assert outcome.text == expected_text(3)
    assert isinstance(outcome.error, LLMConnectionError)
    assert outcome.end is None


@pytest.mark.asyncio
async def test_anthropic_body_ending_without_message_stop_is_a_connection_error(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(anthropic(upstream), ask("eof-after-2"))
    assert outcome.text == expected_text(2)
    assert isinstance(outcome.error, LLMConnectionError)


@pytest.mark.asyncio
async def test_anthropic_mid_stream_error_event_is_a_retryable_provider_error(
    upstream: FakeUpstream, shared: None
) -> None:
    outcome = await run(anthropic(upstream), ask("error-after-2"))
    assert outcome.text == expected_text(2)
    assert isinstance(outcome.error, LLMProviderError)
    assert outcome.error.retryable
    assert "Overloaded" in str(outcome.error)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [429, 500, 529])
async def test_anthropic_overload_and_server_errors_are_retryable(
    upstream: FakeUpstream, shared: None, status: int
) -> None:
    outcome = await run(anthropic(upstream), ask(f"status-{status}"))
    assert outcome.tokens == []
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (status, True)


@pytest.mark.asyncio
async def test_anthropic_bad_request_is_not_retryable(upstream: FakeUpstream, shared: None) -> None:
    outcome = await run(anthropic(upstream), ask("status-400"))
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (400, False)
    assert "Invalid request." in str(outcome.error)


@pytest.mark.asyncio
async def test_anthropic_no_answer_is_a_timeout(upstream: FakeUpstream, shared: None) -> None:
    outcome = await run(anthropic(upstream, timeout=0.3), ask("hang"))
    assert isinstance(outcome.error, LLMTimeoutError)
    assert outcome.error.retryable


@pytest.mark.asyncio
async def test_anthropic_connection_refused_is_a_connection_error(shared: None) -> None:
    provider = AnthropicProvider(KEY, base_url=f"http://127.0.0.1:{unused_port()}")
    outcome = await run(provider, ask())
    assert isinstance(outcome.error, LLMConnectionError)
    assert_key_hidden(outcome.error)


@pytest.mark.asyncio
async def test_anthropic_api_key_never_appears_in_error_messages(shared: None) -> None:
    with FakeUpstream.running(api_key="another-key") as strict:
        outcome = await run(anthropic(strict), ask())
    assert isinstance(outcome.error, LLMProviderError)
    assert (outcome.error.status, outcome.error.retryable) == (401, False)
    assert_key_hidden(outcome.error)


@pytest.mark.asyncio
async def test_anthropic_counts_cached_prompt_tokens_and_ignores_unknown_events() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {"usage": {
            "input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("something_new", {"type": "something_new"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Yes."}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "refusal"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    raw = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)

    async with canned(raw.encode(), "text/event-stream") as url:
        outcome = await run(AnthropicProvider("k", base_url=url), ask())
    assert outcome.tokens == ["Yes."]
    assert outcome.end == StreamEnd("content_filter", 105, 9)


# --- the fake upstream itself -----------------------------------------------------------


def test_fake_upstream_answers_non_streaming_requests_in_both_formats(
    fake_upstream: FakeUpstream,  # noqa: F811 (the imported fixture)
) -> None:
    messages = [{"role": "user", "content": "one two three"}]
    openai_answer = httpx.post(
        f"{fake_upstream.openai_base_url}/chat/completions",
        json={"model": "tokens-3", "messages": messages},
    ).json()
    anthropic_answer = httpx.post(
        f"{fake_upstream.base_url}/v1/messages",
        json={"model": "tokens-4", "messages": messages, "max_tokens": 10},
        headers={"anthropic-version": "2023-06-01"},
    ).json()
    assert openai_answer["object"] == "chat.completion"
    assert openai_answer["choices"][0]["message"]["content"] == expected_text(3)
    assert openai_answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert anthropic_answer["content"] == [{"type": "text", "text": expected_text(4)}]
    assert anthropic_answer["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert [body["model"] for body in fake_upstream.requests] == ["tokens-3", "tokens-4"]


def test_fake_upstream_answers_errors_in_each_providers_shape() -> None:
    with FakeUpstream.running("status-529") as up:
        body = {"model": "m", "messages": [], "max_tokens": 1}
        openai_error = httpx.post(f"{up.openai_base_url}/chat/completions", json=body)
        anthropic_error = httpx.post(
            f"{up.base_url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )
        rate_limited = httpx.post(f"{up.base_url}/v1/messages", json=body | {"model": "status-429"})
    assert openai_error.status_code == 529
    assert set(openai_error.json()["error"]) == {"message", "type", "param", "code"}
    assert anthropic_error.status_code == 529
    assert anthropic_error.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert rate_limited.status_code == 400  # no anthropic-version header: validated first


def test_fake_upstream_lists_and_clears_recorded_requests_over_http() -> None:
    with FakeUpstream.running() as up:
        httpx.post(f"{up.openai_base_url}/chat/completions", json={"model": "m", "messages": []})
        listed = httpx.get(f"{up.base_url}/_fake/requests").json()
        cleared = httpx.delete(f"{up.base_url}/_fake/requests").json()
    assert listed["requests"] == [{"model": "m", "messages": []}]
    assert cleared["requests"] == []
    assert up.requests == []


def test_anthropic_body_drops_what_anthropic_refuses():
    """A trimmed conversation may start with an assistant turn, and OpenAI clients send
    empty assistant messages; Anthropic answers 400 to both."""
    from chats.providers import AnthropicProvider, CompletionRequest

    body = AnthropicProvider("key").build_body(
        CompletionRequest(
            model="claude",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "assistant", "content": "an old answer"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "second"},
            ],
        )
    )
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": "first\n\nsecond"}]


# --- The registry of provider kinds -----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base_url", "provider_class", "url"),
    [
        ("openai", "", OpenAICompatibleProvider, "https://api.openai.com/v1/chat/completions"),
        ("mistral", "", OpenAICompatibleProvider, "https://api.mistral.ai/v1/chat/completions"),
        ("anthropic", "", AnthropicProvider, "https://api.anthropic.com/v1/messages"),
        ("openai_compatible", "http://vllm:8000/v1", OpenAICompatibleProvider,
         "http://vllm:8000/v1/chat/completions"),
    ],
)  # fmt: skip
def test_catalog_entries_build_the_provider_their_kind_registers(
    kind: str, base_url: str, provider_class: type, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chats import catalog
    from chats.models import LLMModel

    monkeypatch.setenv("SOME_KEY", KEY)
    entry = LLMModel(name="m", provider=kind, upstream_model="m", base_url=base_url)
    entry.api_key_env = "SOME_KEY"
    provider = catalog._build_provider(entry)
    assert type(provider) is provider_class
    assert provider._url == url  # type: ignore[attr-defined]
    assert catalog.is_configured(entry)


def test_a_provider_kind_no_module_registers_is_not_usable() -> None:
    from chats import catalog
    from chats.models import LLMModel
    from chats.providers import provider_choices

    assert {key for key, _label in provider_choices()} == {
        "demo",
        "openai",
        "anthropic",
        "mistral",
        "openai_compatible",
    }
    assert catalog.is_configured(LLMModel(name="d", provider="demo"))
    assert not catalog.is_configured(LLMModel(name="x", provider="gone", base_url="http://x"))
