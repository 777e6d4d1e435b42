"""The provider interface: one async stream of tokens, one family of errors.

A provider turns a `CompletionRequest` into an async stream of `TokenDelta` items that
ends with exactly one `StreamEnd`, and reports every failure as a `ProviderError`
subclass whose `code` and `retryable` flag are the product's (`chatproject.errors`).
Consumers should close the stream when they stop early, so that the upstream connection
is released::

    async with contextlib.aclosing(provider.stream(request)) as events:
        async for event in events:
            ...

The HTTP providers share `HTTPProvider` (`http_provider`), the pooled clients it leases
(`http_client`) and its readers of what upstreams send (`wire`); token estimates are in
`tokens`. No Django here: the providers are plain Python and httpx so they can be tested
alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any


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
