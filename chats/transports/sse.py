"""Server-sent event framing: an event, a template event filled per token, the
``[DONE]`` sentinel and the keep-alive comment."""

from __future__ import annotations

from typing import Any

from chats.transports.encoding import json_bytes

# A comment line with no blank line after it: a blank line would end an event, and SSE
# parsers that keep the last event id (httpx-sse, the OpenAI SDKs) then hand over an empty
# event for it once a stream's events carry ids.
KEEPALIVE = b": keep-alive\n"


def sse(data: Any, *, event: str | None = None) -> bytes:
    """One server-sent event: ``data`` as JSON (a ``str`` is sent as it is)."""
    head = f"event: {event}\n".encode() if event else b""
    if not isinstance(data, str):  # JSON holds no raw newline: one data line
        return b"%sdata: %s\n\n" % (head, json_bytes(data))
    return head + "".join(f"data: {line}\n" for line in data.split("\n")).encode() + b"\n"


class Template:
    """An event encoded once, with a string filled in per use: a stream's token events
    differ only in their text, so each costs the encoding of that text alone."""

    SLOT = "\x00slot\x00"  # stands for the text; no event data holds NUL (it is refused)

    def __init__(self, event: bytes) -> None:
        self.before, self.after = event.split(json_bytes(self.SLOT))

    def fill(self, text: str) -> bytes:
        return self.before + json_bytes(text) + self.after


DONE = sse("[DONE]")
