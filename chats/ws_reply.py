"""A ``/ws/chat`` socket's reply under way, one at a time: an answer it generates, or one
it follows after a resume message; how the client's ``cancel`` and the socket's end stop
it (a resumable answer whose socket left runs on to its end)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from chatproject.errors import ApiError, ErrorCode
from chats import stream_log, ws_resume
from chats.engine import Generation
from chats.stream_log import LogWriter


class Reply:
    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.streaming = False  # a reply is under way (until its final event is sent)
        self.generation: Generation | None = None  # the answer, once admitted
        self.log: LogWriter | None = None  # the answer's stream log, when resumable
        self.resuming: str | None = None  # the stream followed after a resume message
        self.detached = False  # the socket is gone: the answer runs on, sending nothing

    def start(self, work: Coroutine[Any, Any, None], *, resuming: str | None = None) -> None:
        """Run ``work`` as the reply: the reply ends with it (if not before)."""
        self.streaming, self.resuming = True, resuming
        self.task = asyncio.create_task(self._run(work))

    async def _run(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        finally:
            self.streaming, self.resuming = False, None

    async def cancel(self) -> None:
        """The client's ``cancel``; raises ApiError when nothing is streaming."""
        if not self.streaming:
            raise ApiError(ErrorCode.VALIDATION_ERROR, "Nothing is streaming.")
        if self.resuming is not None:  # its process ends it; the log brings the end here
            await stream_log.request_stop(self.resuming)
        elif self.generation is None:  # still being admitted: nothing to store yet
            await self.stop()
        else:  # stored cancelled and settled; the stream then ends with message_stream_ended
            self.generation.stop()

    async def stop(self, *, keep_running: bool = False) -> None:
        """End the reply's task; with ``keep_running``, a resumable answer is left to run."""
        self.streaming = False
        task, self.task = self.task, None
        if task is None or task.done():
            return
        if keep_running and self.log is not None and self.resuming is None:
            self.detached = True  # runs to its end, for a client that resumes
            ws_resume.run_detached(task)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
