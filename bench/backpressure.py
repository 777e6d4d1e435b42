"""Backpressure benchmark: what a client that stops reading costs the server.

Run by hand (it prints figures; it asserts nothing):

    .venv/bin/python bench/backpressure.py            # SQLite in a temporary directory
    DATABASE_URL=postgres://... .venv/bin/python bench/backpressure.py

One daphne process; a model whose answers may be a million tokens long (the demo
provider, no delay between tokens). For SSE (``POST /api/ai/chat``) and then WebSocket
(``/ws/chat``), a client asks for a 1,000,000-token answer, reads its first bytes and then
reads nothing more while keeping the connection open. Printed, sampled every second for
``--seconds``: how much the server process's resident memory grew, and how many tokens
the engine had produced (its credit hold's checkpoint); then how the request ended (the
hold's status and its tokens) once the server's ``CLIENT_STALL_TIMEOUT_SECONDS``
(``--stall``) has passed.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import streaming  # noqa: E402

MILLION = "[demo:tokens=1000000] go"


def server_env(args, database_url: str) -> dict[str, str]:
    return {
        **streaming.server_env(),  # production settings
        "DATABASE_URL": database_url,
        "CLIENT_STALL_TIMEOUT_SECONDS": str(args.stall),
        # Checkpoints (where the code has them) show how far the engine got.
        "STREAM_CHECKPOINT_SECONDS": "1",
        "HOLD_LEASE_SECONDS": "30",
    }


def setup(env: dict[str, str]) -> str:
    """Migrate, create a tenant and the million-token model; returns the tenant's key."""
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    import django

    django.setup()
    from decimal import Decimal

    from billing.models import Plan
    from billing.services import api_key_create, tenant_create
    from chats.models import LLMModel

    Plan.objects.update_or_create(
        name="bench-unlimited",
        defaults={"display_name": "Benchmark", "requests_per_minute": None, "burst": None},
    )
    tenant = tenant_create(
        name=f"bench-{time.time_ns()}", plan_name="bench-unlimited", credits=Decimal(10**9)
    )
    LLMModel.objects.update_or_create(
        name="bench-million",
        defaults={
            "provider": "demo",
            "upstream_model": "demo",
            "context_window": 2_000_000,
            "max_output_tokens": 1_000_000,
            "input_price_per_1k": Decimal("0.001"),
            "output_price_per_1k": Decimal("0.001"),
        },
    )
    return api_key_create(tenant=tenant)[1]


def rss_mb(pid: int) -> float:
    return streaming.rss_kb(pid) / 1024


def hold_of(reference: str | None = None):
    """(status, completion tokens) of the newest credit hold (or the one ``reference``
    names)."""
    from django.db import close_old_connections

    from billing.models import CreditHold

    close_old_connections()
    holds = CreditHold.objects.filter(model="bench-million")
    if reference:
        holds = holds.filter(reference=reference)
    row = holds.order_by("-id").values_list("status", "completion_tokens").first()
    return row or ("none", 0)


def client_socket(port: int) -> socket.socket:
    """A client socket whose kernel receive buffer stays at 64 KiB: left to grow, the
    kernel would read megabytes on behalf of a client that reads nothing itself."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", port))
    return sock


def stall_sse(port: int, key: str) -> socket.socket:
    """Ask for the answer over SSE, read its first bytes, then stop reading."""
    body = json.dumps(
        {"model": "bench-million", "messages": [{"role": "user", "content": MILLION}]}
    )
    sock = client_socket(port)
    sock.sendall(
        (
            f"POST /api/ai/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/json\r\nCache-Control: no-cache\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    sock.recv(4096)
    return sock


async def stall_ws(port: int, key: str):
    """Ask for the answer over WebSocket, read its first events, then stop reading."""
    import websockets

    ws = await websockets.connect(
        f"ws://127.0.0.1:{port}/ws/chat?api_key={key}&user_id=bench",
        max_queue=4,
        sock=client_socket(port),
    )
    await ws.send(json.dumps({"content": MILLION, "model": "bench-million"}))
    for _ in range(5):
        await ws.recv()
    return ws


def watch(label: str, pid: int, before: float, seconds: float) -> None:
    peak = 0.0
    print(f"{label}: the client stopped reading; every second: RSS growth, tokens produced")
    for second in range(1, int(seconds) + 1):
        time.sleep(1)
        growth = rss_mb(pid) - before
        peak = max(peak, growth)
        status, tokens = hold_of()
        print(f"  {second:3d} s  +{growth:7.1f} MB  {tokens:8d} tokens  ({status})", flush=True)
    print(f"{label}: peak RSS growth +{peak:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long to watch a stall")
    parser.add_argument("--stall", type=float, default=15, help="the server's stall timeout")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="bench-backpressure-")
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{directory}/bench.sqlite3"
    env = server_env(args, database_url)
    key = setup(env)
    port = streaming.free_port()
    log = open(Path(directory) / "daphne.log", "w")  # noqa: SIM115
    # daphne as the service runs it (where the code has that entry point), or daphne.
    entry = "chatproject.server" if (ROOT / "chatproject" / "server.py").exists() else "daphne"
    command = [sys.executable, "-m", entry, "-b", "127.0.0.1", "-p", str(port)]
    server = streaming.start([*command, "chatproject.asgi:application"], port, env, log)
    try:
        import httpx

        warm = {"model": "bench-million", "messages": [{"role": "user", "content": "warm up"}]}
        httpx.post(f"http://127.0.0.1:{port}/api/ai/chat", json=warm, headers={"X-API-Key": key})
        print(f"server pid {server.pid}, stall timeout {args.stall:g} s, log {log.name}")

        before = rss_mb(server.pid)
        sock = stall_sse(port, key)
        watch("SSE", server.pid, before, args.seconds)
        time.sleep(max(0.0, args.stall - args.seconds) + 3)
        print(f"SSE: after the stall timeout the hold is {hold_of()}")
        sock.close()
        time.sleep(2)
        print(f"SSE: once the client closed, the hold is {hold_of()}")

        async def over_websocket():
            before = rss_mb(server.pid)
            ws = await stall_ws(port, key)
            await asyncio.to_thread(watch, "WebSocket", server.pid, before, args.seconds)
            await asyncio.sleep(max(0.0, args.stall - args.seconds) + 3)
            hold = await asyncio.to_thread(hold_of)
            print(f"WebSocket: after the stall timeout the hold is {hold}")
            await ws.close()
            await asyncio.sleep(2)
            hold = await asyncio.to_thread(hold_of)
            print(f"WebSocket: once the client closed, the hold is {hold}")

        asyncio.run(over_websocket())
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
