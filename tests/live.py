"""A real server for wire tests: daphne (or uvicorn) in its own process, on the test database."""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
APP = "chatproject.asgi:application"
HOST = "127.0.0.1"

# How this service runs under each server, and what its log shows of that.
COMMANDS = {
    "daphne": lambda port: ["chatproject.server", "-b", HOST, "-p", str(port), APP],
    "uvicorn": lambda port: ["chatproject.uvicorn_server", "--host", HOST, "--port", str(port)],
}
ACCESS_LOGGERS = {"daphne": "daphne.access", "uvicorn": "uvicorn.access"}
# The last line a WebSocket connection writes (uvicorn's is its only one, on accepting it).
LAST_WEBSOCKET_LINES = {"daphne": "WSDISCONNECT", "uvicorn": '" [accepted]'}

# A test marked so runs against the session's daphne, then its uvicorn (the `server` fixture).
ON_EACH_SERVER = pytest.mark.parametrize("server", list(COMMANDS), indirect=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for_tests() -> str:
    """The URL of the database the tests run on (the test database, once created)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "postgres")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    kind: str = "daphne"

    @property
    def access_logger(self) -> str:
        return ACCESS_LOGGERS[self.kind]

    @property
    def last_websocket_line(self) -> str:
        return LAST_WEBSOCKET_LINES[self.kind]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(
    tmp_dir: Path, kind: str = "daphne", *, options: tuple[str, ...] = (), **extra_env: str
) -> LiveServer:
    """``kind``'s server with its command-line ``options`` and the environment's ``extra_env``."""
    port = free_port()
    log_path = tmp_dir / f"{kind}-{port}.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "DEBUG": "true",
        "DEMO_TOKEN_DELAY_MS": "0",
        "MODEL_CATALOG_TTL_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
        "ASYNC_DATABASE_POOL": "true",  # as deployed (in-process tests run without it)
        **extra_env,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *COMMANDS[kind](port), *options],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path, kind)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")
