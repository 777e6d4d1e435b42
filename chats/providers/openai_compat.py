"""Any OpenAI-compatible Chat Completions upstream: OpenAI, Mistral, vLLM, Ollama, llama.cpp.

We speak the wire format with httpx rather than the `openai` SDK: pooled async clients are
shared by every request of the process (see `base.leased_client`), we control the connect
and read timeouts and the streaming exactly, we pay no per-chunk pydantic parsing, and the
SDK's automatic retries would silently re-run (and re-charge) a stream that had already
produced tokens; retrying is the engine's decision, made from `ProviderError.retryable`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .base import (
    CompletionRequest,
    LLMConnectionError,
    LLMProviderError,
    Provider,
    StreamEnd,
    StreamItem,
    TokenDelta,
    ToolCallDelta,
    ToolCalls,
    client_lease,
    error_details,
    estimate_prompt_tokens,
    estimate_tokens,
    iter_sse,
    parse_json_object,
    redact,
    transport_error,
    usage_count,
)

# Error types an upstream may report inside a 200 stream that are worth a retry.
_RETRYABLE_STREAM_ERRORS = {"server_error", "api_error", "overloaded_error", "rate_limit_error"}
# Mistral refuses tool call ids that are not 9 letters or digits ("call_..." included).
_MISTRAL_CALL_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def mistral_call_id(call_id: str) -> str:
    """A tool call id Mistral accepts, the same for the same id."""
    if _MISTRAL_CALL_ID.match(call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def wire_messages(
    messages: list[dict[str, Any]], call_id=lambda call_id: call_id
) -> list[dict[str, Any]]:
    """Messages in the Chat Completions format: tool calls and tool results included."""
    wire = []
    for message in messages:
        role = message["role"]
        if role == "tool":
            wire.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id(message["tool_call_id"]),
                    "content": message["content"],
                }
            )
        elif message.get("tool_calls"):
            calls = [
                {
                    "id": call_id(call["id"]),
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in message["tool_calls"]
            ]
            wire.append({"role": role, "content": message["content"] or None, "tool_calls": calls})
        else:
            wire.append({"role": role, "content": message["content"]})
    return wire


def wire_tools(request: CompletionRequest) -> dict[str, Any]:
    """The ``tools``, ``tool_choice`` and ``parallel_tool_calls`` fields of a request."""
    if not request.tools:
        return {}
    fields: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
    }
    choice = request.tool_choice
    if choice in ("auto", "none", "required"):
        fields["tool_choice"] = choice
    elif choice:
        fields["tool_choice"] = {"type": "function", "function": {"name": choice}}
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


class OpenAICompatibleProvider(Provider):
    """Streams from `{base_url}/chat/completions` (base_url ends with `/v1` for most servers)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        include_usage: bool = True,
        max_tokens_field: str = "max_tokens",
        mistral: bool = False,
    ) -> None:
        """`timeout` is the longest wait for any byte (the first one, or the next one mid-
        stream). `include_usage=False` is for old servers that reject `stream_options`;
        `max_tokens_field="max_completion_tokens"` for OpenAI's reasoning models;
        `mistral` for Mistral's API (its own tool call ids)."""
        if name:
            self.name = name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key or None
        self._timeout = timeout
        self._timeouts = httpx.Timeout(timeout, connect=connect_timeout)
        self._client = client
        self._include_usage = include_usage
        self._max_tokens_field = max_tokens_field
        self._call_id = mistral_call_id if mistral else str
        self._headers = {"accept": "text/event-stream", **(headers or {})}
        if self._api_key:
            self._headers["authorization"] = f"Bearer {self._api_key}"

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body sent upstream for `request`."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": wire_messages(request.messages, self._call_id),
            "temperature": request.temperature,
            "stream": True,
            **wire_tools(request),
        }
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
        return body

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        progress = _Progress()
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
                        raise await self._status_error(response)
                    if response.headers.get("content-type", "").startswith("application/json"):
                        # A server that ignored `stream: true` answers with one completion.
                        for item in progress.take_completion(await response.aread()):
                            yield item
                    # Read on to the end of the body after [DONE], so that the connection
                    # goes back to the pool instead of being closed.
                    async for _event, data in iter_sse(response):
                        if progress.done:
                            continue
                        if data == "[DONE]":
                            progress.done = True
                            continue
                        chunk = parse_json_object(data)
                        if chunk is None:
                            raise LLMProviderError(
                                f"{self.name} sent malformed stream data", retryable=False
                            )
                        if chunk.get("error"):
                            raise self._stream_error(chunk["error"])
                        for item in progress.take(chunk):
                            yield item
            except httpx.HTTPError as exc:
                # Once the answer is complete, a failure while draining the body costs nothing.
                if not progress.finished:
                    raise transport_error(
                        exc, upstream=self.name, timeout=self._timeout, secret=self._api_key
                    ) from exc

        if not progress.finished:
            raise LLMConnectionError(f"{self.name} closed the stream before it finished")
        usage = progress.usage
        yield StreamEnd(
            finish_reason=progress.finish_reason or "stop",
            prompt_tokens=usage_count(
                usage, "prompt_tokens", estimate_prompt_tokens(request.messages)
            ),
            completion_tokens=usage_count(
                usage,
                "completion_tokens",
                estimate_tokens("".join(progress.parts) + progress.calls.text()),
            ),
        )

    async def _status_error(self, response: httpx.Response) -> LLMProviderError:
        message, _kind = error_details(await response.aread())
        status = response.status_code
        return LLMProviderError(
            redact(f"{self.name} answered HTTP {status}: {message}", self._api_key), status=status
        )

    def _stream_error(self, error: object) -> LLMProviderError:
        """An error object sent inside a 200 stream (OpenAI, vLLM and Ollama do this)."""
        if not isinstance(error, dict):
            return LLMProviderError(
                redact(f"{self.name} failed mid-stream: {error}", self._api_key), retryable=True
            )
        message = error.get("message") or "unknown error"
        code, kind = error.get("code"), error.get("type")
        if isinstance(code, int) and 400 <= code <= 599:
            return LLMProviderError(
                redact(f"{self.name} failed mid-stream: {message}", self._api_key), status=code
            )
        return LLMProviderError(
            redact(f"{self.name} failed mid-stream: {message}", self._api_key),
            retryable=kind in _RETRYABLE_STREAM_ERRORS or kind is None,
        )


@dataclass
class _Progress:
    """What one completion stream has told so far."""

    parts: list[str] = field(default_factory=list)
    calls: ToolCalls = field(default_factory=ToolCalls)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    done: bool = False  # [DONE] seen: the answer is complete, only the body's end is left

    @property
    def finished(self) -> bool:
        """The whole answer arrived (a finish_reason is as good as [DONE])."""
        return self.done or self.finish_reason is not None

    def take(self, chunk: dict[str, Any]) -> list[StreamItem]:
        """Takes in one `chat.completion.chunk`; returns its text and tool call pieces."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]  # the last chunk's, with include_usage
        items: list[StreamItem] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or None
            if isinstance(text, str):
                self.parts.append(text)
                items.append(TokenDelta(text))
            for position, call in enumerate(delta.get("tool_calls") or ()):
                if isinstance(call, dict):
                    items.append(self._call_piece(call, position))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return items

    def _call_piece(self, call: dict[str, Any], position: int) -> ToolCallDelta:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = call.get("index")
        piece = ToolCallDelta(
            index=index if isinstance(index, int) else position,
            id=call.get("id") or None,
            name=function.get("name") or None,
            arguments=function.get("arguments") or "",
        )
        self.calls.add(piece)
        return piece

    def take_completion(self, raw: bytes) -> list[StreamItem]:
        """Takes in a whole `chat.completion` object; returns its text and tool calls."""
        payload = parse_json_object(raw) or {}
        choices = payload.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        text = str(message.get("content") or "")
        items: list[StreamItem] = []
        if text:
            self.parts.append(text)
            items.append(TokenDelta(text))
        for position, call in enumerate(message.get("tool_calls") or ()):
            if isinstance(call, dict):
                items.append(self._call_piece({**call, "index": position}, position))
        self.finish_reason = str(choice.get("finish_reason") or "stop")
        self.usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        self.done = True
        return items
