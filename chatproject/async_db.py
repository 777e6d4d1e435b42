"""PostgreSQL from the event loop, for the engine's hot statements.

Admission and finalisation are a few writes each, on every request: run through the ORM
they need a worker thread (:func:`chatproject.db.db_call`), a hand-off each way and the
ORM's query compilation. Here each goes out on a psycopg ``AsyncConnectionPool`` of the
server's event loop instead, as one statement: one round trip. Everything off
the hot path (the admin, REST management, the sweeper) stays on the ORM.

On when the database is PostgreSQL and ``ASYNC_DATABASE_POOL`` is on (the server's
default; in-process tests run the ORM path, their server processes this one).
"""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
import weakref
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

try:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    Error: type[Exception] = psycopg.Error
except ImportError:  # SQLite only
    psycopg = None  # type: ignore[assignment]
    Error = type("Error", (Exception,), {})  # nothing raises it

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
    weakref.WeakKeyDictionary()
)


def available() -> bool:
    return (
        psycopg is not None and settings.ASYNC_DATABASE_POOL and _converter().vendor == "postgresql"
    )


@functools.cache
def _converter() -> BaseDatabaseWrapper:
    """A wrapper of the default database that is never connected, for what the ORM's
    conversions of values read (its vendor, operations and features). Not
    ``django.db.connection``: in async code that is a new wrapper in each request, its
    storage being the request's context."""
    return connections.create_connection(DEFAULT_DB_ALIAS)


async def _pool() -> AsyncConnectionPool:
    """This event loop's pool, opened on first use (connections open in the background;
    a request waits up to ``DATABASE_POOL_TIMEOUT`` for one, then it is an outage)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        params = connection.get_connection_params()  # the ORM's own: same database, types
        params.pop("cursor_factory", None)  # a sync cursor class
        params["autocommit"] = True  # each statement is its own transaction (fetch_one)
        pool = AsyncConnectionPool(
            kwargs=params,
            min_size=1,
            max_size=settings.ASYNC_DATABASE_POOL_MAX,
            timeout=settings.DATABASES["default"]["OPTIONS"]["pool"]["timeout"],
            open=False,
            name="engine",
        )
        _pools[loop] = pool
    if pool.closed:  # not opened yet: its connections open in the background
        await pool.open(wait=False)
    return pool


async def fetch_one(sql: str, params: dict[str, Any]) -> tuple:
    """Run one statement (its own transaction: the writes of its CTEs commit together, or
    none do) and return its one row. ``sql`` names its parameters (``%(name)s``)."""
    query, names = _native(sql)
    try:
        values = [params[name] for name in names]
    except KeyError as error:  # as psycopg reports it
        raise psycopg.ProgrammingError(f"query parameter missing: {error.args[0]}") from None
    pool = await _pool()
    async with pool.connection() as conn:
        cursor = psycopg.AsyncRawCursor(conn)
        await cursor.execute(query, values)
        row = await cursor.fetchone()
    assert row is not None  # a statement that always returns a row
    return row


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%|%")


@functools.lru_cache(maxsize=256)  # a handful of statement shapes, each built per request
def _native(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """``sql`` with PostgreSQL's own placeholders (``$1``; a name used twice is one
    parameter), and the names in their order.

    What psycopg does for named parameters itself, but it keeps the result only for
    statements under 4 KB and 50 parameters: admission's on a chat (audit record, hold and
    the user's message) is longer, and would be parsed again on every exchange."""
    names: dict[str, int] = {}

    def number(match: re.Match) -> str:
        if match[0] == "%%":
            return "%"
        if match[1] is None:
            raise ValueError(f"only named parameters are supported: {sql!r}")
        return f"${names.setdefault(match[1], len(names) + 1)}"

    return _PLACEHOLDER.sub(number, sql).encode(), tuple(names)


async def close() -> None:
    """Close this event loop's pool (tests, shutdown)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


# --- Statements built from the models, without the ORM's query compiler ---------------


def insert(
    instance: models.Model, name: str, *, source: str = "", returning: str = ""
) -> tuple[str, dict]:
    """An ``INSERT`` of ``instance`` (a model whose key the caller sets) as the CTE
    ``name``, with its values as the ORM converts them in parameters named ``name_<column>``:
    (sql, params). ``source``: a CTE the row is inserted from, once per row it has (the
    row is then written only when that CTE wrote one); ``returning``: the columns the CTE
    returns."""
    statement = _insert_statement(type(instance), name, source, returning)
    converter = _converter()
    params = {}
    for parameter, field, attname, unchanged in statement.columns:
        value = getattr(instance, attname) if attname else field.pre_save(instance, True)
        if type(value) not in unchanged:  # exact: a subclass may convert otherwise
            value = field.get_db_prep_save(value, converter)
        params[parameter] = value
    return statement.sql, params


class _Column(NamedTuple):
    parameter: str  # the statement's parameter for it
    field: Any
    attname: str  # what pre_save reads, when that is all it does (Field's); else ""
    unchanged: frozenset[type]  # the value types sent as they are (see _UNCHANGED)


class _Insert(NamedTuple):
    sql: str
    columns: list[_Column]


# The value types each of Django's own field classes sends to PostgreSQL as they are: the
# ORM's conversion of them (through several layers of calls for each field, a good part of
# building an INSERT) gives back the same value. Any other type, class or subclass (which
# may convert differently) goes through the ORM's conversion: integers always do (they go
# out as psycopg's sized integer types), and so do datetimes (a naive one is made aware).
_UNCHANGED: dict[type[models.Field], frozenset[type]] = {
    models.CharField: frozenset({str}),
    models.TextField: frozenset({str}),
    models.BooleanField: frozenset({bool}),
    models.UUIDField: frozenset({uuid.UUID}),
}


def _unchanged(field: models.Field) -> frozenset[type]:
    """The value types ``field`` sends unconverted (None too, when it is nullable)."""
    types = _UNCHANGED.get(type(field), frozenset())
    if field.null and (types or type(field) in (models.ForeignKey, models.DateTimeField)):
        types |= {type(None)}
    return types


@functools.cache
def _insert_statement(model: type[models.Model], name: str, source: str, returning: str) -> _Insert:
    concrete = [f for f in model._meta.concrete_fields if not f.generated]
    if any(isinstance(f, models.AutoField | models.BigAutoField) for f in concrete):
        raise TypeError(f"{model.__name__}: its key is the database's, not the caller's")
    fields = [
        _Column(
            f"{name}_{f.column}",
            f,
            f.attname if type(f).pre_save is models.Field.pre_save else "",
            _unchanged(f),
        )
        for f in concrete
    ]
    columns = ", ".join(f'"{column.field.column}"' for column in fields)
    values = ", ".join(f"%({column.parameter})s" for column in fields)
    rows = f"SELECT {values} FROM {source}" if source else f"VALUES ({values})"  # noqa: S608
    if returning:
        rows += f" RETURNING {returning}"
    return _Insert(f'{name} AS (INSERT INTO "{model._meta.db_table}" ({columns}) {rows})', fields)


def prep(model: type[models.Model], field: str, value: Any) -> Any:
    """``value`` of ``model``'s ``field`` as the ORM would send it."""
    return model._meta.get_field(field).get_db_prep_save(value, _converter())  # type: ignore[union-attr]  # a concrete field
