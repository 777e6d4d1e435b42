"""Model steps with server-side tools: call the model, run the tools it asked for, call it
again with their results, at most ``max_steps`` times in one request.

:func:`run_steps` is a provider-shaped stream: the provider's items (text, tool call
pieces) as they come, a :class:`ToolStarted` then a :class:`ToolResult` for each call
of a server tool, a
:class:`StepEnd` between two model calls, and one :class:`StreamEnd` with the usage of
every step added up. Without server tools it is the provider's stream as it is.

A call the server does not run itself (a client's tool) ends the loop: the answer
finishes with ``tool_calls`` for the client to answer. A tool's failure (time-out, an
error status, a refusal, invalid JSON) is a :class:`ToolResult` with an ``error``, which
the model is told as that call's result: nothing here raises for a tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chats.providers import (
    CompletionRequest,
    Provider,
    StreamEnd,
    StreamItem,
    TokenDelta,
    ToolCallDelta,
    ToolCalls,
    ToolSpec,
)

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """A server tool could not answer; the message is what the model is told."""


class ServerTool(Protocol):
    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, arguments: dict[str, Any], *, call_id: str) -> str:
        """The call's result as text (JSON); raises ToolError."""
        ...


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """The model has asked for a server tool call, which runs now."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A server tool's answer to one call: ``output`` (JSON text) or ``error``."""

    call_id: str
    name: str
    arguments: str
    output: str | None = None
    error: str | None = None

    def to_message(self) -> dict[str, Any]:
        content = self.output if self.error is None else json.dumps({"error": self.error})
        return {
            "role": "tool",
            "tool_call_id": self.call_id,
            "name": self.name,
            "content": content,
            "is_error": self.error is not None,
        }


@dataclass(frozen=True, slots=True)
class StepEnd:
    """A model call ended with server tool calls, and the next one follows."""

    step: int
    prompt_tokens: int
    completion_tokens: int


LoopItem = StreamItem | ToolStarted | ToolResult | StepEnd
# (tool name, text, "arguments" | "result") → (the text to use, why it is withheld or None).
Guard = Callable[[str, str, str], tuple[str, str | None]]


async def run_steps(
    provider: Provider,
    request: CompletionRequest,
    *,
    server_tools: Mapping[str, ServerTool],
    max_steps: int,
    result_chars: int,
    guard: Guard | None = None,
) -> AsyncGenerator[LoopItem, None]:
    """The steps of one answer (see the module doc)."""
    messages = list(request.messages)
    prompt_tokens = completion_tokens = 0
    client_tools = {tool.name for tool in request.tools} - set(server_tools)
    for step in range(max(1, max_steps)):
        calls, text, end = ToolCalls(), [], None
        stream = provider.stream(dataclasses.replace(request, messages=messages))
        async with contextlib.aclosing(stream) as items:
            async for item in items:
                if isinstance(item, StreamEnd):
                    end = item
                    continue
                if isinstance(item, ToolCallDelta):
                    calls.add(item)
                elif isinstance(item, TokenDelta):
                    text.append(item.text)
                yield item
        assert end is not None, "a provider stream ends with a StreamEnd"
        prompt_tokens += end.prompt_tokens
        completion_tokens += end.completion_tokens
        asked = calls.done()
        mine = [call for call in asked if call["name"] not in client_tools]
        if not server_tools or not mine:
            yield StreamEnd(end.finish_reason, prompt_tokens, completion_tokens)
            return
        last = step >= max_steps - 1
        for call in mine:
            yield ToolStarted(call["id"], call["name"], call["arguments"])
        if last:
            results = [_not_run(call, max_steps) for call in mine]
        else:
            budget = max(1, result_chars // len(mine))
            results = await asyncio.gather(
                *(_run(server_tools.get(call["name"]), call, budget, guard) for call in mine)
            )
        for result in results:
            yield result
        if last or len(mine) < len(asked):  # the limit, or calls the client must answer
            reason = "length" if last else "tool_calls"
            yield StreamEnd(reason, prompt_tokens, completion_tokens)
            return
        yield StepEnd(step, end.prompt_tokens, end.completion_tokens)
        messages += [
            {"role": "assistant", "content": "".join(text), "tool_calls": asked},
            *(result.to_message() for result in results),
        ]


def _not_run(call: dict[str, str], max_steps: int) -> ToolResult:
    return ToolResult(
        call["id"],
        call["name"],
        call["arguments"],
        error=f"Not run: the limit of {max_steps} model steps per request was reached.",
    )


async def _run(
    tool: ServerTool | None, call: dict[str, str], budget: int, guard: Guard | None
) -> ToolResult:
    def failed(message: str) -> ToolResult:
        return ToolResult(call["id"], call["name"], call["arguments"], error=message)

    if tool is None:
        return failed(f"Unknown tool {call['name']!r}.")
    try:
        arguments = json.loads(call["arguments"])
    except ValueError:
        return failed("The arguments are not valid JSON.")
    if not isinstance(arguments, dict):
        return failed("The arguments must be a JSON object.")
    if guard is not None:
        _, reason = guard(call["name"], call["arguments"], "arguments")
        if reason:
            return failed(reason)
    try:
        output = await tool.run(arguments, call_id=call["id"])
    except ToolError as exc:
        return failed(str(exc))
    except Exception:
        logger.exception("tool %s failed", call["name"])
        return failed("The tool failed unexpectedly.")
    if len(output) > budget:
        return failed(f"The tool's result is longer than {budget} characters.")
    if guard is not None:
        output, reason = guard(call["name"], output, "result")
        if reason:
            return failed(reason)
    return ToolResult(call["id"], call["name"], call["arguments"], output=output)
