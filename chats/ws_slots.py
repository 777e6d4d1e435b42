"""Keeps this process's WebSocket connection slots alive in the shared store.

Slots expire (so a crashed process frees its tenants' slots); live connections are
refreshed by one task per process rather than a timer per connection, which idle
connections would pay for in memory. A slot is refreshed only while the task of the
consumer that holds it runs: a consumer that ended without releasing it (whatever the
reason) has it released by the next round instead of kept alive forever.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from django.conf import settings

from billing import limits
from billing.models import Tenant
from chatproject import metrics

logger = logging.getLogger(__name__)

OnLost = Callable[[], Awaitable[None]]

_held: dict[str, tuple[Tenant, OnLost, asyncio.Task | None]] = {}
_refreshing: dict[str, asyncio.Future[bool]] = {}  # refreshes on their way, by connection
_task: asyncio.Task | None = None


async def take(
    connection_id: str, tenant: Tenant, on_lost: OnLost, owner: asyncio.Task | None
) -> None:
    """Take a slot for a new connection, counted and kept (:func:`keep`); raises ApiError
    (CONNECTION_LIMIT) when the tenant's connections are at the plan's cap."""
    await limits.connection_admit(tenant, connection_id)
    metrics.WEBSOCKETS.inc()
    keep(connection_id, tenant, on_lost, owner)


async def give_back(tenant: Tenant, connection_id: str) -> None:
    """The connection closed: its slot is released (:func:`release`)."""
    metrics.WEBSOCKETS.dec()
    await release(tenant, connection_id)


def keep(connection_id: str, tenant: Tenant, on_lost: OnLost, owner: asyncio.Task | None) -> None:
    """Refresh this connection's slot until :func:`release` or until ``owner`` (the
    consumer's task) ends; ``on_lost`` if it cannot be."""
    global _task
    _held[connection_id] = (tenant, on_lost, owner)
    loop = asyncio.get_running_loop()
    if _task is None or _task.done() or _task.get_loop() is not loop:
        _task = loop.create_task(_refresh_forever())


async def release(tenant: Tenant, connection_id: str) -> None:
    """Stop refreshing the connection's slot and give the slot back (on disconnect).

    A refresh already on its way is waited for first: landing after the release, it
    would take the slot again until it lapsed.
    """
    _held.pop(connection_id, None)
    refresh = _refreshing.get(connection_id)
    if refresh is not None:
        await asyncio.wait([refresh])  # its outcome is the refresher's to handle
    await limits.connection_release(tenant, connection_id)


async def refresh_all() -> None:
    for connection_id, (tenant, on_lost, owner) in list(_held.items()):
        if connection_id not in _held:  # released meanwhile: a refresh would take it again
            continue
        if owner is not None and owner.done():  # its consumer is gone
            try:
                await release(tenant, connection_id)
            except Exception:  # the store is down: the slot lapses by itself
                logger.exception("releasing the slot of an ended connection failed")
            continue
        refresh = asyncio.ensure_future(limits.connection_refresh(tenant, connection_id))
        _refreshing[connection_id] = refresh
        try:
            kept = await refresh
        except Exception:  # the store is down: keep the connection, try again later
            logger.exception("connection slot refresh failed")
            continue
        finally:
            del _refreshing[connection_id]
        if not kept and connection_id in _held:
            _held.pop(connection_id, None)
            try:
                await on_lost()
            except Exception:  # one closing socket must not stop the others' refresh
                logger.exception("closing a connection that lost its slot failed")


async def _refresh_forever() -> None:
    while _held:
        await asyncio.sleep(settings.WS_CONNECTION_SLOT_TTL_SECONDS / 3)
        await refresh_all()
