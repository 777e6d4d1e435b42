"""Waiting for something to happen, instead of sleeping for a guessed time."""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], *, timeout: float = 15, interval: float = 0.05) -> T:
    """``check()``'s first truthy value, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


async def apoll(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 15, interval: float = 0.02
) -> T:
    """:func:`poll` for async tests: ``check`` may be a coroutine function, and the event
    loop runs meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
