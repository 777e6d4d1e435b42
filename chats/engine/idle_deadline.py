"""How long a generation waits on its model: a time limit on each wait for the next item,
not on the time the consumer takes with an item.

``asyncio.timeout`` would do, rescheduled before each wait and disarmed after it: two
timer operations for every token of every answer. Here a wait costs two assignments: one
timer per time limit checks whether the current wait, if any, has run past it, and
otherwise sets itself again for when it could. Past the limit it cancels the waiting
task, which then raises ``TimeoutError`` from its wait, as ``asyncio.timeout`` does.
"""

from __future__ import annotations

import asyncio


class IdleDeadline:
    """The limit on one task's waits (make it in that task)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._since: float | None = None  # when the current wait began
        self._limit = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0  # the task's cancellations before the deadline's own

    def waiting(self, limit: float) -> None:
        """A wait begins, to last at most ``limit`` seconds."""
        self._since, self._limit = self._loop.time(), limit
        due = self._since + limit
        if self._timer is None or self._timer.when() > due:
            self._arm(due)

    def done(self) -> None:
        """The wait is over."""
        self._since = None

    def expire(self) -> None:
        """End the current wait now, as if it had run out of time (nothing if none)."""
        if self._since is not None:
            self._since = self._loop.time() - self._limit
            self._check()

    def timed_out(self) -> bool:
        """Whether the cancellation a wait raised is the deadline's own: the caller raises
        ``TimeoutError`` instead. False for anyone else's, which goes on."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._since is None:  # between waits: the next one sets the timer again
            return
        due = self._since + self._limit
        if self._loop.time() < due:
            self._arm(due)
        elif not self._expired:
            self._expired = True
            self._cancelling = self._task.cancelling()
            self._task.cancel()
