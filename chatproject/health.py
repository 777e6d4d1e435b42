"""Liveness and readiness probes for load balancers and orchestrators."""

import asyncio
import logging
import uuid

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from chatproject.db import db_call
from chatproject.redis import get_redis

logger = logging.getLogger(__name__)


async def healthz(request):
    """The process is alive and serving."""
    return JsonResponse({"status": "ok"})


def _database_ready() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


CHECK_TIMEOUT_SECONDS = 3.0


async def _channel_layer_ready() -> bool:
    """A message through the WebSocket channel layer and back, on its own connections
    (which are not billing's: one can be broken while the other works)."""
    layer = get_channel_layer()
    if layer is None:
        return False
    channel = f"readyz.{uuid.uuid4().hex}"  # not process-local: received directly
    await layer.send(channel, {"type": "readyz"})
    return (await layer.receive(channel)).get("type") == "readyz"


async def _database_answers() -> bool:
    return await db_call(_database_ready)


async def _redis_ready() -> bool:
    return bool(await get_redis().ping())


async def _check(name: str, probe) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return "ok" if await probe() else "error"
    except Exception:
        logger.exception("readiness: %s check failed", name)
        return "error"


async def readyz(request):
    """Ready when the database, the WebSocket channel layer and Redis (when configured)
    answer, each within a few seconds."""
    checks = {"database": await _check("database", _database_answers)}
    if settings.REDIS_URL:
        checks["redis"] = await _check("redis", _redis_ready)
    checks["channel_layer"] = await _check("channel layer", _channel_layer_ready)
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
