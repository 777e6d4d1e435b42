"""The tool calls of one answer, over all its steps, as they stream: their pieces joined,
their results, and the usage of the steps that ended."""

from __future__ import annotations

import uuid
from typing import Any

from chats.engine.types import ToolCallEvent
from chats.providers import ToolCallDelta
from chats.tool_loop import StepEnd, ToolResult


class AnswerCalls:
    """The tool calls of one answer, over all its steps, as they stream."""

    def __init__(self) -> None:
        self.step = 0
        self.calls: dict[tuple[int, int], dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        self.prompt_tokens = self.completion_tokens = 0  # of the steps that ended
        self.parts_before_step = 0  # tokens of the answer's text before this step

    def __bool__(self) -> bool:
        return bool(self.calls)

    def piece(self, piece: ToolCallDelta) -> ToolCallEvent:
        key = (self.step, piece.index)
        call = self.calls.get(key)
        first = call is None
        if call is None:
            call_id = piece.id or f"call_{uuid.uuid4().hex[:24]}"
            call = self.calls[key] = {"id": call_id, "name": piece.name or "", "arguments": ""}
            self.by_id[call_id] = call
        call["arguments"] += piece.arguments
        return ToolCallEvent(
            self.step, piece.index, call["id"], call["name"], piece.arguments, first
        )

    def result(self, result: ToolResult) -> None:
        call = self.by_id.get(result.call_id)
        if call is not None:
            call.update(
                {"output": result.output} if result.error is None else {"error": result.error}
            )

    def step_ended(self, end: StepEnd, tokens: int) -> None:
        self.step += 1
        self.prompt_tokens += end.prompt_tokens
        self.completion_tokens += end.completion_tokens
        self.parts_before_step = tokens

    def all(self) -> list[dict[str, Any]]:
        return [
            {**call, "arguments": call["arguments"] or "{}"}
            for _, call in sorted(self.calls.items())
        ]
