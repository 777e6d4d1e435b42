"""Keeps this process's running generations alive in the database.

One task per process, every ``STREAM_CHECKPOINT_SECONDS`` while generations run, in one
database call off the event loop:

- the leases of all their open credit holds are renewed, in one statement;
- each answer that grew since the last tick is checkpointed, in one write: the stored
  answer (status ``streaming``, its content so far) or, for a stateless request, the
  token counts on its hold;

and, meanwhile, the leases of their concurrent-generation slots in Redis, in one round
trip (:mod:`billing.limits`).

So the sweeper tells a dead process's holds by their lapsed leases, and settles them for
what was checkpointed. Nothing here runs per token.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

from django.conf import settings

from billing import credits, limits
from chatproject.db import db_call

if TYPE_CHECKING:
    from chats.engine import Checkpoint, Generation

logger = logging.getLogger(__name__)

# Weak: a generation whose consumer dropped it without finishing stops being renewed,
# and its hold lapses to the sweeper instead of being leased forever.
_running: weakref.WeakSet[Generation] = weakref.WeakSet()
_task: asyncio.Task | None = None
_tick: asyncio.Future | None = None  # the database call of the tick under way


def join(generation: Generation) -> None:
    """Keep ``generation``'s hold leased and its answer checkpointed until :func:`leave`."""
    global _task
    _running.add(generation)
    loop = asyncio.get_running_loop()
    if _task is None or _task.done() or _task.get_loop() is not loop:
        _task = loop.create_task(_keep_alive())


async def leave(generation: Generation) -> None:
    """Stop renewing and checkpointing ``generation`` (it is being finalised): once this
    returns, no checkpoint of it is being written."""
    _running.discard(generation)
    tick = _tick
    if tick is not None and not tick.done():
        await asyncio.wait([tick])  # its errors are the tick's to log


async def tick() -> None:
    """Renew the leases and write the checkpoints that are due, now."""
    global _tick
    generations = list(_running)
    hold_ids = [g.hold.hold_id for g in generations if g.hold and g.hold.hold_id]
    due = [(g, point) for g in generations if (point := g.checkpoint_due()) is not None]
    slots = [(g.slot.tenant_id, g.slot.id) for g in generations if g.slot]
    if not hold_ids and not due and not slots:
        return
    _tick = asyncio.gather(
        db_call(_write, hold_ids, due),
        limits.generation_slots_renew(slots),
        return_exceptions=True,
    )
    for outcome in await asyncio.shield(_tick):
        if isinstance(outcome, Exception):  # the store is away: leases run till next time
            logger.error("renewing leases failed", exc_info=outcome)


def _write(hold_ids: list[int], due: list[tuple[Generation, Checkpoint]]) -> None:
    # Autocommit: the renewal commits first, and each checkpoint on its own, so one
    # that fails (its chat was deleted, say) costs nobody else theirs.
    credits.holds_renew(hold_ids)
    for generation, point in due:
        generation.write_checkpoint(point)


async def _keep_alive() -> None:
    while _running:
        await asyncio.sleep(settings.STREAM_CHECKPOINT_SECONDS)
        await tick()
