"""The offline demo provider: a deterministic, honest stand-in for a real LLM.

It needs no network and no key. Its reply is built from the request::

    This is the offline demo model. You said: <the last user message, shortened>

split into word-ish tokens, each keeping its leading space, so the joined tokens are the
reply exactly. Usage is reported like a real upstream would: prompt tokens estimated from
all messages with `estimate_tokens`, completion tokens = the number of tokens emitted.
`max_tokens` is respected (the reply is cut, finish_reason "length").

Directives in the LAST user message steer it (they are removed from the echoed text and
can be combined, e.g. ``[demo:tokens=500][demo:delay=5]``):

``[demo:tokens=N]``
    reply with exactly N tokens of filler text instead (long streams, benchmarks).
``[demo:delay=MS]``
    sleep MS milliseconds before each token (overrides the constructor's `token_delay`).
``[demo:fail-after=N]``
    raise LLMConnectionError after N tokens (after the whole reply if it is shorter).
``[demo:stall]``
    never send the first token; the caller's timeout must handle it.
``[demo:stall-after=N]``
    stall forever after N tokens (after the whole reply if it is shorter).
``[demo:error=STATUS]``
    raise LLMProviderError with that HTTP status before any token (429/5xx retryable).
``[demo:tool=NAME {"arg": ...}]``
    when the request offers tools: call tool NAME with those arguments (several
    directives, several calls in one answer), the arguments streamed in small pieces,
    finish_reason "tool_calls". Once the conversation ends with tool results, the reply
    quotes them: ``The tool NAME returned: <result>``.

Unknown directives and directives with a malformed number are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from .base import (
    CompletionRequest,
    LLMConnectionError,
    LLMProviderError,
    Provider,
    StreamEnd,
    StreamItem,
    TokenDelta,
    ToolCallDelta,
)
from .registry import register
from .tokens import estimate_prompt_tokens, estimate_tokens

_TOOL_DIRECTIVE = re.compile(r"\[demo:tool=([A-Za-z0-9_.-]+)\s*", re.IGNORECASE)
_ARGUMENT_PIECE = 7  # characters of arguments per streamed piece
_DIRECTIVE = re.compile(r"\[demo:([a-z-]+)(?:=([^\]]*))?\]", re.IGNORECASE)
_TOKEN = re.compile(r"\s*\S+")
_ECHO_LIMIT = 200
_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def parse_directives(text: str) -> dict[str, int | None]:
    """The `[demo:...]` directives of `text`: name -> number (None for bare flags)."""
    directives: dict[str, int | None] = {}
    for match in _DIRECTIVE.finditer(text):
        name, raw = match.group(1).lower(), match.group(2)
        if raw is None:
            directives[name] = None
            continue
        try:
            directives[name] = max(0, int(raw.strip()))
        except ValueError:
            continue
    return directives


def tool_directives(text: str) -> tuple[list[tuple[str, str]], str]:
    """The ``[demo:tool=NAME {json}]`` directives of ``text`` as (name, arguments JSON), and
    the text without them. Arguments that are not a JSON object count as ``{}``."""
    calls: list[tuple[str, str]] = []
    rest: list[str] = []
    position = 0
    decoder = json.JSONDecoder()
    while match := _TOOL_DIRECTIVE.search(text, position):
        rest.append(text[position : match.start()])
        end = match.end()
        arguments: Any = {}
        with contextlib.suppress(ValueError):
            arguments, end = decoder.raw_decode(text, end)
        close = text.find("]", end)
        position = len(text) if close == -1 else close + 1
        calls.append((match.group(1), json.dumps(arguments if isinstance(arguments, dict) else {})))
    rest.append(text[position:])
    return calls, "".join(rest)


def demo_reply(last_user_message: str) -> str:
    """The demo model's reply to a user message (directives removed)."""
    said = " ".join(_DIRECTIVE.sub(" ", tool_directives(last_user_message)[1]).split())
    if not said:
        return "This is the offline demo model. You said nothing."
    if len(said) > _ECHO_LIMIT:
        said = said[:_ECHO_LIMIT].rstrip() + "…"
    return f"This is the offline demo model. You said: {said}"


def split_tokens(text: str) -> list[str]:
    """Word-ish tokens that keep their leading whitespace: ``"".join(tokens) == text``."""
    tokens = _TOKEN.findall(text)
    rest = len(text) - sum(map(len, tokens))
    if rest and tokens:
        tokens[-1] += text[-rest:]  # trailing whitespace, so nothing is lost
    elif rest:
        tokens = [text]
    return tokens


def filler_token(index: int) -> str:
    """The `index`-th token of the deterministic filler text of `[demo:tokens=N]`."""
    word = _FILLER[index % len(_FILLER)]
    return word if index == 0 else f" {word}"


def _position(value: int | None, length: int) -> int | None:
    return None if value is None else min(value, length)


async def _wait_forever() -> None:
    await asyncio.Event().wait()


class DemoProvider(Provider):
    """Streams a deterministic reply built from the request, token by token."""

    name = "demo"

    def __init__(self, token_delay: float = 0.0) -> None:
        self.token_delay = token_delay

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        last_user = next(
            (m.get("content") or "" for m in reversed(request.messages) if m.get("role") == "user"),
            "",
        )
        directives = parse_directives(last_user)

        status = directives.get("error")
        if status is not None:
            raise LLMProviderError(f"demo: simulated upstream error (HTTP {status})", status=status)

        results = _tool_results(request.messages)
        calls = (
            tool_directives(last_user)[0] if request.tools and request.tool_choice != "none" else []
        )
        if calls and not results:
            async for item in self._call_tools(request, calls):
                yield item
            return

        count = directives.get("tokens")
        # Filler is made token by token: `[demo:tokens=N]` costs no memory however large N is.
        reply: list[str] | None
        if results:
            reply = split_tokens(
                " ".join(f"The tool {name} returned: {content}" for name, content in results)
            )
        else:
            reply = split_tokens(demo_reply(last_user)) if count is None else None
        total = len(reply) if reply is not None else count or 0
        finish_reason = "stop"
        if request.max_tokens is not None and total > request.max_tokens:
            total, finish_reason = max(0, request.max_tokens), "length"

        delay_ms = directives.get("delay")
        delay = delay_ms / 1000 if delay_ms is not None else self.token_delay
        # Failures scheduled past the end of a short reply happen after its last token.
        fail_at = _position(directives.get("fail-after"), total)
        stall_at = 0 if "stall" in directives else _position(directives.get("stall-after"), total)

        for index in range(total + 1):
            if index == stall_at:
                await _wait_forever()
            if index == fail_at:
                raise LLMConnectionError(f"demo: simulated connection drop after {index} tokens")
            if index == total:
                break
            # sleep(0) still yields to the loop, so cancellation is heard in long streams.
            await asyncio.sleep(delay)
            yield TokenDelta(reply[index] if reply is not None else filler_token(index))

        yield StreamEnd(
            finish_reason=finish_reason,
            prompt_tokens=estimate_prompt_tokens(request.messages),
            completion_tokens=total,
        )

    async def _call_tools(
        self, request: CompletionRequest, calls: list[tuple[str, str]]
    ) -> AsyncGenerator[StreamItem, None]:
        if request.parallel_tool_calls is False:
            calls = calls[:1]
        for index, (name, arguments) in enumerate(calls):
            await asyncio.sleep(self.token_delay)
            yield ToolCallDelta(index, f"call_{uuid.uuid4().hex[:24]}", name, "")
            for start in range(0, len(arguments), _ARGUMENT_PIECE):
                await asyncio.sleep(self.token_delay)
                yield ToolCallDelta(index, arguments=arguments[start : start + _ARGUMENT_PIECE])
        yield StreamEnd(
            finish_reason="tool_calls",
            prompt_tokens=estimate_prompt_tokens(request.messages),
            completion_tokens=estimate_tokens("".join(name + args for name, args in calls)),
        )


def _tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The tool results the conversation ends with (after the model's last tool calls)."""
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append((message.get("name") or "tool", message.get("content") or ""))
    return results[::-1]


register("demo", "Demo (offline)", lambda up: DemoProvider(up.token_delay), offline=True)
