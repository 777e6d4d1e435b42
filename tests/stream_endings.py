"""Real clients of every streaming format that record how each stream ended, for the
fault tests and ``bench/faults.py``.

An :class:`Ending` says what the client got: ``complete`` (the format's normal end),
``error`` (the format's error event and then its end), ``refused`` (an HTTP error
status, or a WebSocket closed before any reply), ``cut`` (the connection closed without
the format's end) or ``hung`` (nothing ended it within the client's deadline).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
import websockets

# format name -> (path, body for a prompt)
SSE_FORMATS = {
    "regpilot": (
        "/api/ai/chat",
        lambda prompt: {"messages": [{"role": "user", "content": prompt}]},
    ),
    "docgen": ("/api/v1/chat/stream", lambda prompt: {"message": prompt}),
    "legacy": ("/api/v1/chat/generate", lambda prompt: {"message": prompt}),
    "aisdk": ("/api/chat", lambda prompt: {"prompt": prompt}),
    "openai": (
        "/v1/chat/completions",
        lambda prompt: {
            "model": "balanced",
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
}
FORMATS = (*SSE_FORMATS, "ws")


@dataclass
class Ending:
    format: str
    kind: str = "hung"  # complete, error, refused, cut, hung
    status: int | None = None  # the HTTP status (101 for a WebSocket that was accepted)
    code: str | None = None  # the error code the client was given, if any
    tokens: int = 0
    seconds: float = 0.0
    message_id: str | None = None  # the answer's id, where the format says it
    events: list = field(default_factory=list, repr=False)

    @property
    def ended(self) -> bool:
        """The client was told how the stream ended (or was refused up front)."""
        return self.kind in ("complete", "error", "refused")


def _sse_events(lines: list[str]):
    """``(event, data)`` pairs of an SSE body's lines."""
    event, data = None, []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def _code_of(fmt: str, event: str | None, payload) -> str | None:
    if not isinstance(payload, dict):
        return None
    if fmt == "openai":
        return (payload.get("error") or {}).get("code")
    if fmt == "aisdk":
        text = payload.get("errorText", "")
        return text.rsplit("(", 1)[-1].split(";")[0] if "(" in text else text
    return payload.get("code")


def classify_sse(fmt: str, events: list[tuple[str | None, str]]) -> tuple[str, str | None, int]:
    """The ending a complete SSE body shows: ``(kind, error code, tokens)``."""
    tokens, code, error, end = 0, None, False, False
    for event, data in events:
        payload = None if data == "[DONE]" else json.loads(data)
        if data == "[DONE]":
            end = True
        elif fmt == "regpilot":
            tokens += event is None and "content" in payload
            if event == "error":
                error, code = True, _code_of(fmt, event, payload)
        elif fmt in ("docgen", "legacy"):
            tokens += event in ("message", "token")
            if event == "error":
                error, end, code = True, True, _code_of(fmt, event, payload)
            elif event == "done":
                end = True
        elif fmt == "aisdk":
            tokens += payload.get("type") == "text-delta"
            if payload.get("type") == "error":
                error, code = True, _code_of(fmt, event, payload)
        elif fmt == "openai":
            if "error" in payload:  # OpenAI ends a failed stream with its error object
                error, end, code = True, True, _code_of(fmt, event, payload)
            elif payload.get("choices") and payload["choices"][0]["delta"].get("content"):
                tokens += 1
    if not end:
        return "cut", code, tokens
    return ("error" if error else "complete"), code, tokens


async def sse_stream(
    client: httpx.AsyncClient, base_url: str, key: str, fmt: str, prompt: str, *, deadline: float
) -> Ending:
    """One streaming request in format ``fmt``; ``deadline`` seconds at most."""
    path, body = SSE_FORMATS[fmt]
    ending = Ending(fmt)
    started = time.monotonic()
    lines: list[str] = []
    try:
        async with asyncio.timeout(deadline):
            async with client.stream(
                "POST",
                base_url + path,
                json=body(prompt),
                headers={"X-API-Key": key, "Cache-Control": "no-cache"},
                timeout=httpx.Timeout(deadline),
            ) as response:
                ending.status = response.status_code
                if response.status_code != 200:
                    raw = await response.aread()
                    ending.kind = "refused"
                    try:
                        error = json.loads(raw)["error"]
                        ending.code = error.get("code")
                    except (ValueError, KeyError, TypeError):
                        pass
                    ending.message_id = response.headers.get("x-chat-id")
                    return ending
                ending.message_id = response.headers.get("x-chat-id")
                try:
                    async for line in response.aiter_lines():
                        lines.append(line)
                except httpx.HTTPError:
                    ending.events = list(_sse_events([*lines, ""]))
                    ending.kind, ending.code, ending.tokens = "cut", None, 0
                    _, ending.code, ending.tokens = classify_sse(fmt, ending.events)
                    return ending
        ending.events = list(_sse_events([*lines, ""]))
        ending.kind, ending.code, ending.tokens = classify_sse(fmt, ending.events)
    except TimeoutError:
        ending.events = list(_sse_events([*lines, ""]))
        ending.kind = "hung"
        _, ending.code, ending.tokens = classify_sse(fmt, ending.events)
    except httpx.HTTPError:
        ending.kind = "cut"
    finally:
        ending.seconds = time.monotonic() - started
    return ending


async def ws_stream(ws_url: str, key: str, prompt: str, *, deadline: float) -> Ending:
    """One WebSocket exchange on a new chat: connect, send ``prompt``, read to its end."""
    ending = Ending("ws")
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            try:
                socket = await websockets.connect(
                    f"{ws_url}/ws/chat?user_id=faults", additional_headers={"X-API-Key": key}
                )
            except websockets.InvalidStatus as exc:
                ending.kind, ending.status = "refused", exc.response.status_code
                return ending
            ending.status = 101
            async with socket:
                sent = False
                async for raw in socket:
                    event = json.loads(raw)
                    ending.events.append(event)
                    kind = event["type"]
                    if kind == "connection_established" and not sent:
                        await socket.send(json.dumps({"content": prompt}))
                        sent = True
                    elif kind == "message_stream_started":
                        ending.message_id = event["message_id"]
                    elif kind == "message_stream_token":
                        ending.tokens += 1
                    elif kind == "message_stream_ended":
                        ending.kind = "complete"
                        return ending
                    elif kind == "error":
                        ending.code = event["code"]
                        ending.kind = "error" if sent else "refused"
                        return ending
                ending.kind = "cut"  # closed without an ending
    except TimeoutError:
        ending.kind = "hung"
    except (OSError, websockets.WebSocketException):
        ending.kind = "cut"
    finally:
        ending.seconds = time.monotonic() - started
    return ending


async def stream(
    client: httpx.AsyncClient,
    base_url: str,
    key: str,
    fmt: str,
    prompt: str,
    *,
    deadline: float,
) -> Ending:
    if fmt == "ws":
        return await ws_stream(
            base_url.replace("http://", "ws://", 1), key, prompt, deadline=deadline
        )
    return await sse_stream(client, base_url, key, fmt, prompt, deadline=deadline)


async def fan_out(a_ws_url: str, b_ws_url: str, key: str) -> dict:
    """Two sockets on one chat, A's on one server and B's on another: the
    ``message_stream_ended`` event B hears of an exchange on A (through the channel layer)."""
    headers = {"X-API-Key": key}
    async with websockets.connect(
        f"{a_ws_url}/ws/chat?user_id=fan", additional_headers=headers
    ) as a:
        chat_id = json.loads(await a.recv())["chat_id"]
        async with websockets.connect(
            f"{b_ws_url}/ws/chat?user_id=fan&chat_id={chat_id}", additional_headers=headers
        ) as b:
            await b.recv()
            await a.send(json.dumps({"content": "[demo:tokens=3] fan out"}))
            async with asyncio.timeout(10):
                while True:
                    event = json.loads(await b.recv())
                    if event["type"] == "message_stream_ended":
                        return event
