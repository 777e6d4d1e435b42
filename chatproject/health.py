"""Liveness and readiness probes for load balancers and orchestrators."""

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from chatproject.redis import get_redis

logger = logging.getLogger(__name__)


async def healthz(request):
    """The process is alive and serving."""
    return JsonResponse({"status": "ok"})


def _database_ready() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


async def readyz(request):
    """Ready when the database, and Redis when configured, answer."""
    checks: dict[str, str] = {}
    try:
        checks["database"] = "ok" if await sync_to_async(_database_ready)() else "error"
    except Exception:
        logger.exception("readiness: database check failed")
        checks["database"] = "error"
    if settings.REDIS_URL:
        try:
            await get_redis().ping()
            checks["redis"] = "ok"
        except Exception:
            logger.exception("readiness: redis check failed")
            checks["redis"] = "error"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
