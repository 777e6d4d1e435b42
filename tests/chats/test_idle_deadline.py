"""The time limit on each wait for a model's next item (chats.engine.idle_deadline)."""

import asyncio
import time

import pytest

from chats.engine.idle_deadline import IdleDeadline


async def _waits(deadline: IdleDeadline, limit: float, durations: list[float]) -> list[str]:
    """Each of ``durations`` one wait under ``deadline``, as the engine waits on a model,
    with as long again between waits (the consumer's time with an item)."""
    outcomes = []
    for duration in durations:
        deadline.waiting(limit)
        try:
            await asyncio.sleep(duration)
            outcomes.append("item")
        except asyncio.CancelledError:
            if deadline.timed_out():
                outcomes.append("timeout")
                break
            raise
        finally:
            deadline.done()
        await asyncio.sleep(duration)  # not counted
    return outcomes


def test_a_wait_past_the_limit_times_out_and_time_between_waits_does_not_count():
    async def scenario():
        deadline = IdleDeadline()
        started = time.monotonic()
        outcomes = await _waits(deadline, 0.2, [0.15, 0.15, 0.15, 0.5, 0.1])
        deadline.close()
        return outcomes, time.monotonic() - started

    outcomes, took = asyncio.run(scenario())
    assert outcomes == ["item", "item", "item", "timeout"]
    assert 1.0 < took < 1.3  # three waits and pauses of 0.15 s, then 0.2 s of the fourth


def test_expire_ends_the_current_wait_now():
    async def scenario():
        deadline = IdleDeadline()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, deadline.expire)
        started = time.monotonic()
        outcomes = await _waits(deadline, 30, [5])
        deadline.close()
        return outcomes, time.monotonic() - started

    outcomes, took = asyncio.run(scenario())
    assert outcomes == ["timeout"] and took < 1


def test_expire_between_waits_does_nothing():
    async def scenario():
        deadline = IdleDeadline()
        deadline.expire()
        outcomes = await _waits(deadline, 1, [0.01, 0.01])
        deadline.close()
        return outcomes

    assert asyncio.run(scenario()) == ["item", "item"]


def test_someone_elses_cancel_stays_a_cancel():
    async def waiting():
        deadline = IdleDeadline()
        try:
            return await _waits(deadline, 30, [5])
        finally:
            deadline.close()

    async def scenario():
        task = asyncio.ensure_future(waiting())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
