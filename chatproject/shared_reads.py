"""Reads of the database that every caller wanting the same thing at once shares.

The per-process copies of what each request needs (its API key, the model catalog, a
tenant's tools) run out on a timer: without this, every request in flight when one ran
out would read it again, each in a worker thread of its own, dozens at a time under load.
A read started here is awaited by everyone who wants that key meanwhile (per event loop:
a task belongs to one), and a copy's users start the next read before the copy runs out
(``REFRESH_AFTER``), so under steady load no request waits on it at all.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

REFRESH_AFTER = 0.5  # of a copy's life: past this, a use starts the next read


class SharedReads(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[tuple[asyncio.AbstractEventLoop, Hashable], asyncio.Task[T]] = {}

    def start(self, key: Hashable, read: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        """The read of ``key`` under way in this event loop, ``read()`` started if none is."""
        loop = asyncio.get_running_loop()
        running = self._running.get((loop, key))
        if running is None:
            running = loop.create_task(read())
            self._running[loop, key] = running
            running.add_done_callback(functools.partial(self._done, loop, key))
        return running

    def _done(self, loop: asyncio.AbstractEventLoop, key: Hashable, task: asyncio.Task) -> None:
        self._running.pop((loop, key), None)
        if not task.cancelled():
            task.exception()  # its waiters have the error; a read started ahead may have none

    def __len__(self) -> int:
        return len(self._running)

    async def latest(
        self,
        key: Hashable,
        copy: tuple[float, T] | None,
        life: float,
        read: Callable[[], Coroutine[Any, Any, T]],
    ) -> T:
        """``copy`` (read at, value) while it is younger than ``life`` seconds, starting the
        next read once it is past ``REFRESH_AFTER`` of that; else what the read of ``key``
        under way (or started now) finds."""
        if copy is not None:
            age = time.monotonic() - copy[0]
            if age < life:
                if age >= REFRESH_AFTER * life:  # for the uses to come; this one has the copy
                    self.start(key, read)
                return copy[1]
        return await asyncio.shield(self.start(key, read))  # one leaving cancels no other's
