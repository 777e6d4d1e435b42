"""The provider interface: one async stream of tokens, one family of errors.

A provider turns a `CompletionRequest` into an async stream of `TokenDelta` items that
ends with exactly one `StreamEnd`, and reports every failure as a `ProviderError`
subclass whose `code` and `retryable` flag are the product's (`chatproject.errors`).
Consumers should close the stream when they stop early, so that the upstream connection
is released::

    async with contextlib.aclosing(provider.stream(request)) as events:
        async for event in events:
            ...

The second half of this module is what the HTTP providers share: `HTTPProvider`, the one
`stream()` of every upstream that answers a POST with server-sent events (lease a pooled
client, send, map HTTP and transport errors, read events, finish or fail), and its
plumbing (pooled clients per event loop, an incremental SSE reader, error mapping). No
Django here: the providers are plain Python and httpx so they can be tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class CompletionRequest:
    """What the engine asks of a provider.

    ``messages`` are ``{"role": "system"|"user"|"assistant", "content": str}``; an
    assistant message may carry ``tool_calls`` (``[{"id", "name", "arguments"}]``, the
    arguments a JSON text), answered by ``{"role": "tool", "tool_call_id", "name",
    "content"}`` messages. ``tool_choice`` is ``auto``, ``none``, ``required`` or the name
    of the one tool the model must call.
    """

    model: str  # the upstream model id
    messages: list[dict[str, Any]]
    temperature: float = 0.7
    max_tokens: int | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None


TOOL_CHOICE_MODES = ("auto", "none", "required")


@dataclass(frozen=True)
class TokenDelta:
    """A piece of generated text, as the upstream sent it."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call, as OpenAI streams them: the first piece of call ``index``
    names it (``id``, ``name``); every piece may add to its JSON ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class StreamEnd:
    """The last item of every successful stream."""

    finish_reason: str  # OpenAI's names: "stop", "length", "content_filter", "tool_calls"
    prompt_tokens: int
    completion_tokens: int  # upstream usage when reported, else estimate_tokens(full text)


StreamItem = TokenDelta | ToolCallDelta | StreamEnd

_D = TypeVar("_D", int, int | None)


class ProviderError(Exception):
    """Base of every provider failure; `str(error)` never contains an API key."""

    code: str = "LLM_PROVIDER_ERROR"
    retryable: bool = False

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if retryable is not None:
            self.retryable = retryable


class LLMConnectionError(ProviderError):
    """The upstream was unreachable, refused the connection, or dropped it mid-stream."""

    code = "LLM_CONNECTION_ERROR"
    retryable = True


class LLMTimeoutError(ProviderError):
    """The upstream did not answer, or stalled, for longer than the timeout."""

    code = "LLM_TIMEOUT"
    retryable = True


class LLMProviderError(ProviderError):
    """The upstream answered with an error; retryable for 429 and 5xx (529 included)."""

    code = "LLM_PROVIDER_ERROR"

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool | None = None
    ) -> None:
        if retryable is None:
            retryable = is_retryable_status(status)
        super().__init__(message, status=status, retryable=retryable)


def is_retryable_status(status: int | None) -> bool:
    """429 (rate limited) and every 5xx, Anthropic's 529 "overloaded" included."""
    return status is not None and (status == 429 or 500 <= status <= 599)


class Provider(ABC):
    """An LLM upstream behind one async method."""

    name: str

    @abstractmethod
    def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        """Yields TokenDelta and ToolCallDelta items then exactly one StreamEnd; raises
        ProviderError subclasses."""


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic token estimate: ~4 characters a token, at least 1 if non-empty."""
    if not text:
        return 0
    return max(1, (len(text) + 3) // 4)


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """The estimate of a prompt: the sum of its messages' estimates (tool calls included)."""
    return sum(estimate_tokens(message_text(message)) for message in messages)


def message_text(message: Mapping[str, Any]) -> str:
    """A message's content and the names and arguments of its tool calls."""
    text = str(message.get("content") or "")
    calls = message.get("tool_calls") or ()
    if calls:
        text += "".join(f"{call['name']}{call['arguments']}" for call in calls)
    return text


class ToolCalls:
    """The tool calls of one answer, assembled from their streamed pieces."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, str]] = {}

    def add(self, piece: ToolCallDelta) -> dict[str, str]:
        """Takes in one piece; returns the call it belongs to."""
        call = self.calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        if piece.id:
            call["id"] = piece.id
        if piece.name:
            call["name"] = piece.name
        call["arguments"] += piece.arguments
        return call

    def __bool__(self) -> bool:
        return bool(self.calls)

    def done(self) -> list[dict[str, str]]:
        """The calls in index order, arguments ``{}`` when none came."""
        return [
            {**call, "arguments": call["arguments"] or "{}"}
            for _, call in sorted(self.calls.items())
        ]

    def text(self) -> str:
        return "".join(call["name"] + call["arguments"] for call in self.calls.values())


# --- Shared HTTP plumbing for the HTTP providers ------------------------------------------

# httpx clients are bound to the event loop they first ran in, and a process may run several
# loops (daphne's, a test's, asgiref's), so the clients are kept per loop.
#
# httpcore's pool walks all its connections (idle ones twice over, with a poll() syscall
# each) whenever a request starts or ends, so one big pool collapses under a few hundred
# concurrent streams (measured: ~3x fewer streams/s at 200 concurrent than the scheme below).
# So each loop keeps a small set of clients and fills them in order, at most
# _STREAMS_PER_CLIENT streams each: a quiet server uses (and keeps warm) the first client
# only, a busy one spreads over several small pools. They share one SSLContext.
_STREAMS_PER_CLIENT = 8
_MAX_CLIENTS = 128
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=16, keepalive_expiry=30)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


class _LoopClients:
    """The pooled clients of one event loop and how many streams each is serving."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.active: list[int] = []

    def pick(self) -> int:
        for index, count in enumerate(self.active):
            if count < _STREAMS_PER_CLIENT and not self.clients[index].is_closed:
                return index
        if len(self.clients) < _MAX_CLIENTS:
            self.clients.append(
                httpx.AsyncClient(verify=_ssl_context(), limits=_LIMITS, follow_redirects=False)
            )
            self.active.append(0)
            return len(self.clients) - 1
        return min(range(len(self.active)), key=self.active.__getitem__)


_LOOP_CLIENTS: dict[asyncio.AbstractEventLoop, _LoopClients] = {}


@contextlib.contextmanager
def leased_client() -> Iterator[httpx.AsyncClient]:
    """A pooled AsyncClient of the running loop, held for the length of one stream."""
    loop = asyncio.get_running_loop()
    clients = _LOOP_CLIENTS.get(loop)
    if clients is None:
        for stale in [other for other in _LOOP_CLIENTS if other.is_closed()]:
            del _LOOP_CLIENTS[stale]  # its sockets died with its loop; nothing left to close
        clients = _LOOP_CLIENTS[loop] = _LoopClients()
    index = clients.pick()
    clients.active[index] += 1
    try:
        yield clients.clients[index]
    finally:
        clients.active[index] -= 1


def client_lease(
    client: httpx.AsyncClient | None,
) -> contextlib.AbstractContextManager[httpx.AsyncClient]:
    """`client` when one was injected, else a leased pooled client."""
    return contextlib.nullcontext(client) if client is not None else leased_client()


async def aclose_shared_client() -> None:
    """Closes the running loop's pooled clients (at shutdown, and in tests)."""
    clients = _LOOP_CLIENTS.pop(asyncio.get_running_loop(), None)
    for client in clients.clients if clients else ():
        await client.aclose()


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` masked."""
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


async def iter_sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Yields (event, data) for each server-sent event as soon as its blank line arrives.

    Follows the WHATWG rules that matter here: `data` lines are joined with newlines,
    comments (`:` lines) are skipped, one space after the colon is dropped, and an event
    left incomplete at the end of the body is discarded (it was cut off).
    """
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value


def parse_json_object(data: str | bytes) -> dict[str, Any] | None:
    """`data` decoded as a JSON object, or None when it is not one."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def error_details(raw: bytes) -> tuple[str, str | None]:
    """(message, error type) from an upstream error body.

    Understands OpenAI's `{"error": {"message", "type"}}`, Anthropic's
    `{"type": "error", "error": {"type", "message"}}`, Ollama's `{"error": "..."}` and
    FastAPI-style `{"detail": ...}`; anything else is quoted, shortened.
    """
    payload = parse_json_object(raw)
    if payload is not None:
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            kind = error.get("type") or error.get("code")
            if message:
                return str(message)[:500], str(kind) if kind else None
        if isinstance(error, str) and error:
            return error[:500], None
        for key in ("message", "detail"):
            if payload.get(key):
                return str(payload[key])[:500], None
    text = raw.decode("utf-8", "replace").strip()
    return (text[:300] or "no details"), None


def usage_count(usage: Mapping[str, Any] | None, key: str, default: _D) -> int | _D:
    """A token count from an upstream usage object, or `default` when it is not reported."""
    value = usage.get(key) if usage else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return default


def transport_error(
    exc: httpx.HTTPError, *, upstream: str, timeout: float, secret: str | None = None
) -> ProviderError:
    """The ProviderError for an httpx failure, with `secret` masked in its message."""
    reason = redact(str(exc) or type(exc).__name__, secret)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return LLMProviderError(f"{upstream} URL is not usable: {reason}", retryable=False)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return LLMConnectionError(f"Could not connect to {upstream}: {reason}")
    if isinstance(exc, httpx.PoolTimeout):
        return LLMTimeoutError(f"No free connection to {upstream} within {timeout:g}s")
    if isinstance(exc, httpx.TimeoutException):
        return LLMTimeoutError(f"{upstream} did not answer within {timeout:g}s")
    if isinstance(exc, httpx.TransportError):
        return LLMConnectionError(f"Connection to {upstream} was lost: {reason}")
    return LLMProviderError(f"{upstream} sent an unreadable response: {reason}", retryable=False)


class Reading(ABC):
    """What one upstream stream has told so far; each provider reads its own events."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls = ToolCalls()
        self.finish_reason: str | None = None  # in the upstream's own vocabulary
        self.prompt_tokens: int | None = None  # as reported; None until then
        self.completion_tokens: int | None = None
        self.done = False  # the end marker came: only the end of the body is left

    @property
    def finished(self) -> bool:
        """The whole answer arrived (a finish reason is as good as the end marker)."""
        return self.done or self.finish_reason is not None

    @abstractmethod
    def take(self, event: str, payload: dict[str, Any]) -> Iterable[StreamItem]:
        """Takes in one event's JSON; returns the text and tool call pieces it carries."""

    def text(self, piece: str) -> TokenDelta:
        self.parts.append(piece)
        return TokenDelta(piece)

    def call_piece(self, piece: ToolCallDelta) -> ToolCallDelta:
        self.calls.add(piece)
        return piece

    def finish(self) -> str:
        """The finish reason in OpenAI's names."""
        return self.finish_reason or "stop"

    def end(self, request: CompletionRequest) -> StreamEnd:
        """The stream's last item: reported usage, else estimates of what was sent."""
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return StreamEnd(
            finish_reason=self.finish(),
            prompt_tokens=prompt
            if prompt is not None
            else estimate_prompt_tokens(request.messages),
            completion_tokens=completion
            if completion is not None
            else estimate_tokens("".join(self.parts) + self.calls.text()),
        )


class HTTPProvider(Provider):
    """An upstream that answers a POST with a stream of server-sent events.

    A provider module says where to post (`path`), how to authenticate (`auth_headers`),
    what to send (`build_body`), how to read its events (`new_reading`) and which of them
    are errors (`stream_error`); the stream itself is the same for all.
    """

    path: ClassVar[str]
    end_marker: ClassVar[str | None] = None  # a data line that ends the answer ("[DONE]")
    # Error types in an HTTP error body that make the failure retryable whatever the status.
    retryable_error_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        connect_timeout: float,
        client: httpx.AsyncClient | None,
        name: str | None,
        headers: Mapping[str, str],
    ) -> None:
        """`timeout` is the longest wait for any byte (the first one, or the next one mid-
        stream)."""
        if name:
            self.name = name
        self._url = base_url.rstrip("/") + self.path
        self._api_key = api_key or None
        self._timeout = timeout
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        self._client = client
        self._headers = {"accept": "text/event-stream", **headers}
        if self._api_key:
            self._headers.update(self.auth_headers(self._api_key))

    @abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the credential."""

    @abstractmethod
    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body sent upstream for `request`."""

    @abstractmethod
    def new_reading(self) -> Reading:
        """An empty reading for one stream."""

    @abstractmethod
    def stream_error(self, event: str, payload: dict[str, Any]) -> LLMProviderError | None:
        """The error an event reports inside a 200 stream, or None for any other event."""

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        reading = self.new_reading()
        with client_lease(self._client) as client:
            try:
                async with client.stream(
                    "POST",
                    self._url,
                    json=self.build_body(request),
                    headers=self._headers,
                    timeout=self._timeouts,
                ) as response:
                    if not response.is_success:
                        raise await self.status_error(response)
                    for item in await self.whole_answer(response, reading):
                        yield item
                    # Read on to the end of the body after the answer is complete, so that
                    # the connection goes back to the pool instead of being closed.
                    async for event, data in iter_sse(response):
                        if reading.done:
                            continue
                        if data == self.end_marker:
                            reading.done = True
                            continue
                        payload = parse_json_object(data)
                        if payload is None:
                            raise LLMProviderError(
                                f"{self.name} sent malformed stream data", retryable=False
                            )
                        error = self.stream_error(event, payload)
                        if error is not None:
                            raise error
                        for item in reading.take(event, payload):
                            yield item
            except httpx.HTTPError as exc:
                # Once the answer is complete, a failure while draining the body costs nothing.
                if not reading.finished:
                    raise transport_error(
                        exc, upstream=self.name, timeout=self._timeout, secret=self._api_key
                    ) from exc

        if not reading.finished:
            raise LLMConnectionError(f"{self.name} closed the stream before it finished")
        yield reading.end(request)

    async def whole_answer(self, response: httpx.Response, reading: Reading) -> list[StreamItem]:
        """The items of an answer that came whole instead of as events (none by default)."""
        return []

    async def status_error(self, response: httpx.Response) -> LLMProviderError:
        """The error for a non-2xx answer, its body's message quoted with the key masked."""
        message, kind = error_details(await response.aread())
        status = response.status_code
        return LLMProviderError(
            self.redact(f"{self.name} answered HTTP {status}: {message}"),
            status=status,
            retryable=True if kind in self.retryable_error_types else None,
        )

    def redact(self, text: str) -> str:
        return redact(text, self._api_key)
