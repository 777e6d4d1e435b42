"""Resuming a ``/ws/chat`` answer from its stream log (``chats.stream_log``): which answers
a socket may resume, the events it is sent again, and answers that run on after their
socket left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from chatproject.errors import ApiError, ErrorCode
from chats import stream_log
from chats.stream_log import LogWriter, WireChunk

if TYPE_CHECKING:
    from chats.ws_session import Session

STREAM_FORMAT = "ws"  # the stream log's name for this transport's chunks

_running: set[asyncio.Future] = set()  # answers whose socket left, and their logs' ends


async def check(log_id: str, session: Session) -> None:
    """Raises NOT_FOUND unless ``log_id`` is an answer of the session's chat."""
    header = await stream_log.wire_header(log_id)
    if (
        header is None
        or header.format != STREAM_FORMAT
        or header.tenant_id != session.tenant.pk
        or header.chat_id != str(session.chat.id)
    ):
        raise ApiError(
            ErrorCode.NOT_FOUND,
            "No answer with this message_id to resume in this chat (or it ended too long ago).",
        )


async def events_after(log_id: str, after: int) -> AsyncIterator[str]:
    """The answer's logged events after token ``after`` (all of them for -1), then the
    live ones, as sent. Raises STREAM_ERROR when the log breaks off."""
    skipping = after >= 0  # until token ``after``: what came before it is skipped
    try:
        async for item in stream_log.follow_wire(log_id):
            if not isinstance(item, WireChunk):
                return
            if skipping:
                kind = item.data[: item.data.find(",")]  # '{"type": "..."'
                if "message_stream_token" in kind:
                    skipping = orjson.loads(item.data)["index"] < after
                    continue
                if "message_stream_ended" not in kind and '"error"' not in kind:
                    continue
            yield item.data
    except (TimeoutError, stream_log.LogTrimmed):
        raise ApiError(
            ErrorCode.STREAM_ERROR,
            "The answer's stream broke off: the server running it sent nothing more.",
            retryable=True,
        ) from None


def run_detached(task: asyncio.Future) -> None:
    """Keep an answer whose socket left running to its end, for a client that resumes."""
    _running.add(task)
    task.add_done_callback(_running.discard)


def close_log(log: LogWriter, status: str) -> None:
    run_detached(asyncio.ensure_future(log.close_wire(status)))
