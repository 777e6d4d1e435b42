"""Token estimates, for when an upstream reports no usage and for what a prompt will cost
before it is sent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic token estimate: ~4 characters a token, at least 1 if non-empty."""
    if not text:
        return 0
    return max(1, (len(text) + 3) // 4)


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """The estimate of a prompt: the sum of its messages' estimates (tool calls included)."""
    total = 0
    for message in messages:  # (a loop: a chat's whole history, for every message sent)
        content = message.get("content")
        if type(content) is str and "tool_calls" not in message:
            total += (len(content) + 3) // 4  # estimate_tokens(content), inline
        else:
            total += estimate_tokens(message_text(message))
    return total


def message_text(message: Mapping[str, Any]) -> str:
    """A message's content and the names and arguments of its tool calls."""
    text = str(message.get("content") or "")
    calls = message.get("tool_calls") or ()
    if calls:
        text += "".join(f"{call['name']}{call['arguments']}" for call in calls)
    return text
