"""Fire-and-forget tasks of the engine: releases and finalisation that outlive the request
that started them."""

from __future__ import annotations

import asyncio


def _in_background(coroutine) -> asyncio.Future:
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


_background: set[asyncio.Future] = set()  # keeps fire-and-forget tasks referenced
