"""What a stream log holds: a generation's tokens and end, and for a resumable stream its
header and the chunks its client was sent, then the stream's end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LogToken:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class LogEnd:
    status: str  # the generation's stored status: complete, failed or cancelled
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "s": self.status,
            "f": self.finish_reason,
            "p": self.prompt_tokens,
            "o": self.completion_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogEnd:
        return cls(str(data["s"]), str(data["f"]), int(data["p"]), int(data["o"]))


LogItem = LogToken | LogEnd


@dataclass(frozen=True, slots=True)
class WireHeader:
    """Whose a resumable stream is: only its tenant may resume it, in its own format."""

    format: str  # the transport that encoded its chunks
    tenant_id: int
    chat_id: str | None = None  # its chat, whose active stream it is while it runs

    def to_json(self) -> str:
        return json.dumps({"f": self.format, "t": self.tenant_id, "c": self.chat_id})

    @classmethod
    def from_json(cls, raw: str | bytes) -> WireHeader:
        data = json.loads(raw)
        return cls(str(data["f"]), int(data["t"]), data.get("c"))


@dataclass(frozen=True, slots=True)
class WireChunk:
    seq: int  # its position in the stream, from 0 (the SSE event id)
    data: str


@dataclass(frozen=True, slots=True)
class WireEnd:
    status: str  # complete, failed or cancelled


WireItem = WireChunk | WireEnd


class LogTrimmed(Exception):
    """The chunks a reader asked for are no longer in the log (trimmed, or expired)."""
