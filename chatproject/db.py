"""Running ORM work from async code, and sending statements without waiting on each."""

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

try:
    from psycopg_pool.base import AttemptWithBackoff
except ImportError:  # SQLite only
    AttemptWithBackoff = None  # type: ignore[assignment,misc]  # absent, not a class

if AttemptWithBackoff is not None:
    # psycopg_pool retries a failed connect after 1 s, then doubles the wait each time (up
    # to its 5 minute reconnect timeout): after a database outage of a minute the pool would
    # sit for up to another minute before trying again, answering 503 all the while. Retry
    # every second instead; a connect attempt to a server that is down costs next to nothing.
    AttemptWithBackoff.DELAY_BACKOFF = 1.0

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


@contextlib.contextmanager
def pipelined() -> Iterator[None]:
    """Statements run inside go out without waiting for one another's answers (PostgreSQL
    pipeline mode), so a block of writes costs one round trip rather than one each; a
    no-op on other databases.

    Reading a result inside the block waits for everything sent so far. A failing
    statement raises when the block ends (or at that read), not where it was run, and
    the statements after it in the block are skipped: only put in writes whose errors
    need no handling of their own.
    """
    if connection.vendor != "postgresql":
        yield
        return
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.pipeline():
        yield
