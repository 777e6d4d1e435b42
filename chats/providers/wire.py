"""Reading what HTTP upstreams send: server-sent events as they arrive, JSON objects,
error bodies of the known dialects, usage counts, and transport failures as ProviderErrors
(with the key masked)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

import aiohttp
import orjson

from .base import LLMConnectionError, LLMProviderError, LLMTimeoutError, ProviderError

_D = TypeVar("_D", int, int | None)


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` masked."""
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


class SSEParser:
    """Server-sent events from a body's bytes as they arrive: :meth:`feed` takes a chunk
    and returns the events it completed, as (event, data). A parser rather than a
    generator over the body: a layer of generators costs every token a resumption.

    Follows the WHATWG rules that matter here: lines end with LF, CRLF or CR and may be of
    any length (aiohttp's own line reader refuses one over 128 KiB, and one event may
    carry a long tool call); `data` lines are joined with newlines, comments (`:` lines)
    are skipped, one space after the colon is dropped; an event left incomplete at the
    end of the body is never returned (it was cut off).
    """

    def __init__(self) -> None:
        self._pending = b""  # the start of a line whose end has not come
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        pending = self._pending + chunk if self._pending else chunk
        if b"\r" in pending:  # CRLF and CR as LF; a CR at the very end may be half a CRLF
            keep = pending.endswith(b"\r")
            if keep:
                pending = pending[:-1]
            lines = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            self._pending = lines.pop() + (b"\r" if keep else b"")
        else:
            lines = pending.split(b"\n")
            self._pending = lines.pop()
        events: list[tuple[str, str]] = []
        for raw in lines:
            if not raw:
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            line = raw.decode("utf-8", "replace")
            if line[0] == ":":
                continue
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
        return events


def parse_json_object(data: str | bytes) -> dict[str, Any] | None:
    """`data` decoded as a JSON object, or None when it is not one. orjson reads every
    event of every stream; what it refuses (an integer past 64 bits, NaN) json may read."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
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


# What a failed exchange with an upstream raises: aiohttp's errors, and its timeouts
# (asyncio.TimeoutError, which aiohttp's own timeout errors also are).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def transport_error(
    exc: BaseException, *, upstream: str, timeout: float, secret: str | None = None
) -> ProviderError:
    """The ProviderError for a transport failure, with `secret` masked in its message."""
    reason = redact(str(exc) or type(exc).__name__, secret)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return LLMProviderError(f"{upstream} URL is not usable: {reason}", retryable=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return LLMConnectionError(f"Could not connect to {upstream}: {reason}")
    if isinstance(exc, asyncio.TimeoutError):
        return LLMTimeoutError(f"{upstream} did not answer within {timeout:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return LLMConnectionError(f"Could not connect to {upstream}: {reason}")
    if isinstance(exc, aiohttp.ClientPayloadError):  # the body was cut off
        return LLMConnectionError(f"Connection to {upstream} was lost: {reason}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return LLMProviderError(
            f"{upstream} sent an unreadable response: {reason}", retryable=False
        )
    return LLMConnectionError(f"Connection to {upstream} was lost: {reason}")
