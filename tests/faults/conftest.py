"""The fault suite's stack: its own redis-server and (where the server binaries are
installed) its own PostgreSQL cluster, on free ports, which the tests stop and start
under live daphne processes. The shared services are never touched.

Without the PostgreSQL binaries the Redis tests run on a throwaway SQLite file; without
``redis-server`` the suite is skipped, as are the PostgreSQL tests without PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import outages
from tests.live import ROOT, LiveServer, start_server
from tests.polling import apoll

MISSING = outages.missing()


@dataclass
class Stack:
    """The throwaway services and a database migrated on them."""

    redis: outages.RedisServer
    pg: outages.PostgresCluster | None
    database_url: str
    tmp: Path
    tenants: dict[str, str] = field(default_factory=dict)  # API key -> tenant name

    def env(self, **extra: str) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis.url(), **extra}

    def manage(self, *args: str) -> str:
        """``manage.py`` on this stack; its last line of output (a new key, say)."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**os.environ, "DEBUG": "true", **self.env()},
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def tenant(self, plan: str = "enterprise", credits: str = "1000") -> str:
        """A new tenant on ``plan``; its API key (:meth:`books` takes it)."""
        name = f"t-{uuid.uuid4().hex[:8]}"
        key = self.manage("create_tenant", name, "--plan", plan, "--credits", credits)
        self.tenants[key] = name
        return key

    def books(self, key: str) -> dict:
        """The tenant's books (see ``outages.books``)."""
        return outages.books(self.database_url, self.tenants[key])

    async def until_admitted(self, key: str, requests: int) -> None:
        """Until ``requests`` of the tenant's requests hold their credits: admitted past
        the database, they stream from here on."""

        def admitted() -> bool:
            return self.books(key)["open holds"] == requests

        await apoll(lambda: asyncio.to_thread(admitted), interval=0.1)

    def settled_tokens(self, key: str) -> list[int]:
        """The completion tokens each of the tenant's settled holds was charged for."""
        rows = outages.query(
            self.database_url,
            "SELECT h.completion_tokens FROM billing_credithold h"
            " JOIN billing_tenant t ON t.id = h.tenant_id"
            " WHERE t.name = %s AND h.status = 'settled'",
            (self.tenants[key],),
        )
        return [tokens for (tokens,) in rows]

    def books_when(self, key: str, condition: Callable[[dict], bool], timeout: float = 30) -> dict:
        """The tenant's books once ``condition`` holds of them (or as they are at
        ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            books = self.books(key)
            if condition(books) or time.monotonic() > deadline:
                return books
            time.sleep(0.25)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Own Redis, and own PostgreSQL where installed (else SQLite)."""
    if "redis" in MISSING:
        pytest.skip(f"fault tests need their own Redis: {MISSING['redis']}")
    tmp = tmp_path_factory.mktemp("faults")  # the servers' logs stay here
    redis = outages.RedisServer()
    redis.start()
    pg = None
    try:
        if "postgres" not in MISSING:
            pg = outages.PostgresCluster()
            pg.start()
            pg.create_database("faults")
            database_url = pg.url("faults")
        else:
            database_url = f"sqlite:///{tmp / 'faults.sqlite3'}"
        stack = Stack(redis, pg, database_url, tmp)
        stack.manage("migrate", "--noinput")
        yield stack
    finally:
        redis.close()
        if pg is not None:
            pg.close()


@pytest.fixture(scope="session")
def pg_stack(stack):
    """The stack, for tests that stop PostgreSQL: skipped without it."""
    if stack.pg is None:
        pytest.skip(f"PostgreSQL outage tests need their own cluster: {MISSING['postgres']}")
    return stack


@pytest.fixture
def serve(stack):
    """Start live daphne processes on the stack (stopped after the test); the services
    the test stopped are started again."""
    servers: list[LiveServer] = []

    def start(**extra: str) -> LiveServer:
        server = start_server(stack.tmp, **stack.env(**extra))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    if stack.redis.process is None:
        stack.redis.start()
    if stack.pg is not None and not (stack.pg.data / "postmaster.pid").exists():
        stack.pg.start()
