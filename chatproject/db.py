"""Running ORM work from async code."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def _call_and_release(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return fn(*args, **kwargs)
    finally:
        # Hand the connection back to the pool: worker threads live outside Django's
        # request cycle, which would otherwise never close them.
        close_old_connections()


# Sized like the connection pool: a thread waiting on the database holds a connection.
_executor = ThreadPoolExecutor(
    max_workers=getattr(settings, "DATABASE_POOL_MAX", 20), thread_name_prefix="db"
)


async def db_call(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn`` in a worker thread of the database executor.

    Not asgiref's default single shared thread: streaming requests make two such calls
    each, and serialising every request's database work on one thread caps throughput.
    """
    run = sync_to_async(_call_and_release, thread_sensitive=False, executor=_executor)
    return await run(fn, *args, **kwargs)
