"""Any OpenAI-compatible Chat Completions upstream: OpenAI, Mistral, vLLM, Ollama, llama.cpp.

We speak the wire format with aiohttp rather than the `openai` SDK: one pooled session is
shared by every request of the process (see `http_client.upstream_session`), we control the
connect and read timeouts and the streaming exactly, we pay no per-chunk pydantic parsing, and the
SDK's automatic retries would silently re-run (and re-charge) a stream that had already
produced tokens; retrying is the engine's decision, made from `ProviderError.retryable`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from .base import CompletionRequest, LLMProviderError, StreamItem, ToolCallDelta
from .http_provider import HTTPProvider, Reading
from .registry import register
from .wire import parse_json_object, usage_count

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


class OpenAICompatibleProvider(HTTPProvider):
    """Streams from `{base_url}/chat/completions` (base_url ends with `/v1` for most servers)."""

    name = "openai"
    path = "/chat/completions"
    end_marker = "[DONE]"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
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
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            session=session,
            name=name,
            headers=headers or {},
        )
        self._include_usage = include_usage
        self._max_tokens_field = max_tokens_field
        self._call_id = mistral_call_id if mistral else str

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

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

    def new_reading(self) -> _Reading:
        return _Reading()

    async def whole_answer(
        self, response: aiohttp.ClientResponse, reading: Reading
    ) -> list[StreamItem]:
        """A server that ignored `stream: true` answers with one completion."""
        if not response.headers.get("content-type", "").startswith("application/json"):
            return []
        assert isinstance(reading, _Reading)
        return reading.take_completion(await response.read())

    def stream_error(self, event: str, payload: dict[str, Any]) -> LLMProviderError | None:
        """An error object sent inside a 200 stream (OpenAI, vLLM and Ollama do this)."""
        error = payload.get("error")
        if not error:
            return None
        if not isinstance(error, dict):
            return LLMProviderError(
                self.redact(f"{self.name} failed mid-stream: {error}"), retryable=True
            )
        message = self.redact(
            f"{self.name} failed mid-stream: {error.get('message') or 'unknown error'}"
        )
        code, kind = error.get("code"), error.get("type")
        if isinstance(code, int) and 400 <= code <= 599:
            return LLMProviderError(message, status=code)
        return LLMProviderError(message, retryable=kind in _RETRYABLE_STREAM_ERRORS or kind is None)


class _Reading(Reading):
    """What one completion stream has told so far."""

    def take(self, event: str, payload: dict[str, Any]) -> Iterable[StreamItem]:
        """Takes in one `chat.completion.chunk`; returns its text and tool call pieces."""
        if isinstance(payload.get("usage"), dict):
            self._count(payload["usage"])  # the last chunk's, with include_usage
        items: list[StreamItem] = []
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or None
            if isinstance(text, str):
                items.append(self.text(text))
            for position, call in enumerate(delta.get("tool_calls") or ()):
                if isinstance(call, dict):
                    items.append(self._call_piece(call, position))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return items

    def _count(self, usage: dict[str, Any]) -> None:
        self.prompt_tokens = usage_count(usage, "prompt_tokens", None)
        self.completion_tokens = usage_count(usage, "completion_tokens", None)

    def _call_piece(self, call: dict[str, Any], position: int) -> ToolCallDelta:
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        index = call.get("index")
        return self.call_piece(
            ToolCallDelta(
                index=index if isinstance(index, int) else position,
                id=call.get("id") or None,
                name=function.get("name") or None,
                arguments=function.get("arguments") or "",
            )
        )

    def take_completion(self, raw: bytes) -> list[StreamItem]:
        """Takes in a whole `chat.completion` object; returns its text and tool calls."""
        payload = parse_json_object(raw) or {}
        choices = payload.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        text = str(message.get("content") or "")
        items: list[StreamItem] = []
        if text:
            items.append(self.text(text))
        for position, call in enumerate(message.get("tool_calls") or ()):
            if isinstance(call, dict):
                items.append(self._call_piece({**call, "index": position}, position))
        self.finish_reason = str(choice.get("finish_reason") or "stop")
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self._count(usage)
        self.done = True
        return items


register(
    "openai",
    "OpenAI",
    lambda up: OpenAICompatibleProvider(up.base_url, up.api_key, timeout=up.timeout, name=up.name),
    default_base_url="https://api.openai.com/v1",
)
register(
    "mistral",
    "Mistral",
    lambda up: OpenAICompatibleProvider(
        up.base_url, up.api_key, timeout=up.timeout, name=up.name, mistral=True
    ),
    default_base_url="https://api.mistral.ai/v1",
)
register(
    "openai_compatible",
    "OpenAI-compatible server",
    lambda up: OpenAICompatibleProvider(up.base_url, up.api_key, timeout=up.timeout, name=up.name),
    default_base_url="https://api.openai.com/v1",  # most entries name their own server
)
