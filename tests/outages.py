"""Throwaway Redis and PostgreSQL servers that a test (or a benchmark) may stop and start
at will, on free ports in a temporary directory: never the shared services.

``RedisServer`` needs ``redis-server`` on the PATH; ``PostgresCluster`` needs the server
binaries (``initdb``, ``pg_ctl``) under ``/usr/lib/postgresql/*/bin`` or on the PATH. When
running as root, the cluster is run as the ``postgres`` system user (``initdb`` refuses
root). :func:`missing` says what is absent, so a test can skip with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {timeout} s")


def postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _postgres_user() -> pwd.struct_passwd | None:
    """The account to run the cluster as: this one, or ``postgres`` when this is root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def missing() -> dict[str, str]:
    """What each server kind needs and this machine lacks: ``{"redis": reason, ...}``."""
    reasons = {}
    if shutil.which("redis-server") is None:
        reasons["redis"] = "redis-server is not installed"
    if postgres_bin_dir() is None:
        reasons["postgres"] = "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    elif os.geteuid() == 0 and _postgres_user() is None:
        reasons["postgres"] = "running as root and there is no postgres user to run initdb as"
    return reasons


class RedisServer:
    """A redis-server of its own: nothing saved, so a restart starts empty (as a failover
    to a fresh replica would)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outage-redis-"))
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _port_open(self.port), 10, "redis-server did not start")

    def stop(self) -> None:
        """Killed, as a crash or a lost network would: open connections just break."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresCluster:
    """A PostgreSQL cluster of its own (trust authentication, user ``postgres``)."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(missing()["postgres"])
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outage-pg-"))
        self.data = self.dir / "data"
        self.user = _postgres_user()
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.dir)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            # No fsync: only the server is stopped, never the machine, so what was
            # written survives. (Not synchronous_commit=off: that loses the last commits
            # of a server stopped at once, which the product must not be blamed for.)
            " -c fsync=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stopped at once (``immediate``: no clean shutdown), as a crash would."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def query(database_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` on a deployment's database (PostgreSQL or a SQLite file); ``%s``
    placeholders in either."""
    if database_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        sql = sql.replace("%s", "?")
    else:
        import psycopg

        conn = psycopg.connect(database_url)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def books(database_url: str, tenant: str | None = None) -> dict:
    """What a deployment's database says about money and answers (of one tenant, or of
    all): whether each ledger sums to its balance, the holds still open, the messages
    kept by role and status."""
    params = (tenant,)  # the one tenant of that name, or every tenant for None
    tenants = query(
        database_url,
        "SELECT t.name, t.credit_balance, COALESCE(SUM(l.amount), 0) FROM billing_tenant t"
        " LEFT JOIN billing_ledgerentry l ON l.tenant_id = t.id"
        " WHERE t.name = COALESCE(CAST(%s AS TEXT), t.name)"
        " GROUP BY t.id, t.name, t.credit_balance",
        params,
    )
    open_holds = query(
        database_url,
        "SELECT COUNT(*) FROM billing_credithold h JOIN billing_tenant t ON t.id = h.tenant_id"
        " WHERE t.name = COALESCE(CAST(%s AS TEXT), t.name) AND h.status = 'open'",
        params,
    )[0][0]
    messages = query(
        database_url,
        "SELECT m.role, m.status, COUNT(*) FROM chats_message m"
        " JOIN chats_chat c ON c.id = m.chat_id JOIN billing_tenant t ON t.id = c.tenant_id"
        " WHERE t.name = COALESCE(CAST(%s AS TEXT), t.name)"
        " GROUP BY m.role, m.status",
        params,
    )
    return {
        "ledger equals balance": all(
            Decimal(str(balance)) == Decimal(str(ledger)) for _, balance, ledger in tenants
        ),
        "open holds": open_holds,
        "messages": {f"{role} {status}": n for role, status, n in messages},
    }
