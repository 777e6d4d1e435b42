"""Anthropic's Messages API, streamed.

Like the OpenAI-compatible provider this speaks the wire format with aiohttp (one pooled
session, exact timeouts, no SDK retries re-running a stream that already produced tokens).
The stream is a sequence of named SSE events: `message_start` (input usage),
`content_block_start`, `content_block_delta` (`text_delta` pieces), `content_block_stop`,
`message_delta` (stop_reason and CUMULATIVE usage), `message_stop`; `ping` may come at any
time and `error` can arrive mid-stream (e.g. `overloaded_error`).

Tool calls are `tool_use` content blocks (their arguments streamed as `input_json_delta`
pieces), told here as OpenAI-style tool call pieces numbered from 0 in the order the
blocks start; tool results go back as `tool_result` blocks of a user turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from .base import CompletionRequest, LLMProviderError, StreamItem, ToolCallDelta
from .http_provider import HTTPProvider, Reading
from .registry import register
from .wire import usage_count

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens on every request

# Anthropic stop reasons in OpenAI's vocabulary; anything unknown counts as a normal stop.
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Error types whose HTTP equivalents are 429 or 5xx: worth retrying.
_RETRYABLE_ERRORS = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)


class AnthropicProvider(HTTPProvider):
    """Streams from `{base_url}/v1/messages`."""

    name = "anthropic"
    path = "/v1/messages"
    retryable_error_types = _RETRYABLE_ERRORS

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = "https://api.anthropic.com",
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        anthropic_version: str = ANTHROPIC_VERSION,
        session: aiohttp.ClientSession | None = None,
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`timeout` is the longest wait for any byte (Anthropic pings long streams)."""
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            session=session,
            name=name,
            headers={"anthropic-version": anthropic_version, **(headers or {})},
        )
        self._default_max_tokens = default_max_tokens

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body sent upstream: system messages move to the top-level `system`,
        tool calls become `tool_use` blocks and tool results `tool_result` blocks."""
        system = "\n\n".join(
            m["content"] for m in request.messages if m["role"] == "system" and m["content"]
        )
        turns: list[dict[str, Any]] = []
        for message in request.messages:
            blocks = _blocks(message)
            if message["role"] == "system" or not blocks:
                continue  # Anthropic refuses empty turns
            role = "assistant" if message["role"] == "assistant" else "user"
            if not turns and role == "assistant":
                continue  # and a conversation that starts with the assistant (trimmed)
            if turns and turns[-1]["role"] == role:
                # Anthropic wants alternating turns; merge a run of same-role messages.
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_plain(turn) for turn in turns],
            "max_tokens": max(1, request.max_tokens)
            if request.max_tokens is not None
            else self._default_max_tokens,
            # Anthropic's range is 0..1 where OpenAI's is 0..2; clamp rather than be refused.
            "temperature": min(max(request.temperature, 0.0), 1.0),
            "stream": True,
        }
        if system:
            body["system"] = system
        body.update(_tools(request))
        return body

    def new_reading(self) -> _Reading:
        return _Reading()

    def stream_error(self, event: str, payload: dict[str, Any]) -> LLMProviderError | None:
        """An `error` event inside a 200 stream, e.g. `overloaded_error`."""
        if (payload.get("type") or event) != "error":
            return None
        error = payload.get("error")
        error = error if isinstance(error, dict) else {}
        kind = error.get("type")
        message = error.get("message") or kind or "unknown error"
        return LLMProviderError(
            self.redact(f"{self.name} failed mid-stream: {message}"),
            retryable=kind in _RETRYABLE_ERRORS,
        )


class _Reading(Reading):
    """What one message stream has told so far (`finish_reason` is Anthropic's stop_reason;
    `message_stop` is the end marker)."""

    def __init__(self) -> None:
        super().__init__()
        self.call_of_block: dict[int, int] = {}  # content block index → tool call index

    def finish(self) -> str:
        return _FINISH_REASONS.get(self.finish_reason or "end_turn", "stop")

    def take(self, event: str, payload: dict[str, Any]) -> Iterable[StreamItem]:
        kind = payload.get("type") or event
        index = payload.get("index")  # the content block's
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "input_json_delta":
                call = self.call_of_block.get(index) if isinstance(index, int) else None
                piece = delta.get("partial_json") or ""
                if call is None or not piece:
                    return ()
                return (self.call_piece(ToolCallDelta(call, arguments=piece)),)
            text = delta.get("text") if delta.get("type") == "text_delta" else None
            return (self.text(text),) if text else ()
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use" and isinstance(index, int):
                call = self.call_of_block[index] = len(self.call_of_block)
                given = block.get("input")  # {} when streamed; whole otherwise
                arguments = json.dumps(given) if given else ""
                return (
                    self.call_piece(
                        ToolCallDelta(call, block.get("id"), block.get("name"), arguments)
                    ),
                )
        elif kind == "message_start":
            self._count((payload.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            stop_reason = (payload.get("delta") or {}).get("stop_reason")
            self.finish_reason = stop_reason or self.finish_reason
            self._count(payload.get("usage"))  # cumulative, not an increment
        elif kind == "message_stop":
            self.done = True
        # ping, content_block_stop and event types added later: nothing to do
        return ()

    def _count(self, usage: Mapping[str, Any] | None) -> None:
        self.prompt_tokens = _input_tokens(usage, self.prompt_tokens)
        self.completion_tokens = usage_count(usage, "output_tokens", self.completion_tokens)


def _input_tokens(usage: Mapping[str, Any] | None, current: int | None) -> int | None:
    """All prompt tokens processed: fresh input plus cache writes and cache reads."""
    if not usage or not isinstance(usage.get("input_tokens"), int):
        return current
    return sum(
        usage_count(usage, key, 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A message as Anthropic content blocks."""
    if message["role"] == "tool":
        result = {
            "type": "tool_result",
            "tool_use_id": message["tool_call_id"],
            "content": message["content"] or "(empty)",
        }
        if message.get("is_error"):
            result["is_error"] = True
        return [result]
    blocks: list[dict[str, Any]] = []
    if message["content"]:
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": call["name"], "input": _input(call)}
        )
    return blocks


def _input(call: Mapping[str, str]) -> dict[str, Any]:
    """A call's arguments as the object Anthropic wants (arguments that are not an object
    are kept under ``input``, so nothing the model said is lost)."""
    try:
        value = json.loads(call["arguments"] or "{}")
    except ValueError:
        return {"input": call["arguments"]}
    return value if isinstance(value, dict) else {"input": value}


def _plain(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn of text only is sent as one string, its messages' texts joined."""
    blocks = turn["content"]
    if all(block["type"] == "text" for block in blocks):
        return {"role": turn["role"], "content": "\n\n".join(b["text"] for b in blocks)}
    return turn


def _tools(request: CompletionRequest) -> dict[str, Any]:
    """The ``tools`` and ``tool_choice`` fields for the request's tools."""
    if not request.tools:
        return {}
    tools = [
        {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
        for tool in request.tools
    ]
    choice = request.tool_choice or "auto"
    if choice == "auto":
        tool_choice: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        tool_choice = {"type": "none"}
    elif choice == "required":
        tool_choice = {"type": "any"}
    else:
        tool_choice = {"type": "tool", "name": choice}
    if request.parallel_tool_calls is False and choice != "none":
        tool_choice["disable_parallel_tool_use"] = True
    return {"tools": tools, "tool_choice": tool_choice}


register(
    "anthropic",
    "Anthropic",
    lambda up: AnthropicProvider(
        up.api_key, base_url=up.base_url, timeout=up.timeout, name=up.name
    ),
    default_base_url="https://api.anthropic.com",
)
