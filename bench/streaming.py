"""Streaming benchmark: one server process against a local fake OpenAI-compatible upstream.

Run by hand (it prints figures; it asserts nothing):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench REDIS_URL=redis://127.0.0.1:6379/9 \
        .venv/bin/python bench/streaming.py

Measures, over WebSocket (/ws/chat), each exchange persisted in the database:
  1. time to first token added by the service over calling the upstream directly (p50, p99)
  2. exchanges/s and streamed tokens/s at 32 concurrent conversations
  3. concurrent streaming conversations one process holds (each a 10 s reply)
  4. memory per idle WebSocket connection (server RSS growth / connections)
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SLOW_REPLY = "tokens-200+delay-50"  # a 10 s reply
SECRET = "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789"  # noqa: S105


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def server_env() -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": SECRET,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        "DEMO_TOKEN_DELAY_MS": "0",
    }


def create_database_if_missing() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return
    import psycopg
    from psycopg import sql

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup_database(upstream_url: str) -> str:
    """Migrate, and create the benchmark tenant (no limits) and model. Returns the key."""
    create_database_if_missing()
    os.environ.update({k: v for k, v in server_env().items() if k not in os.environ})
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        check=True,
        env=server_env(),
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    os.environ.update(server_env())
    import django

    django.setup()
    from decimal import Decimal

    from billing.models import Plan
    from billing.services import api_key_create, tenant_create
    from chats.models import LLMModel

    Plan.objects.update_or_create(
        name="bench",
        defaults={
            "display_name": "Benchmark",
            "requests_per_minute": None,
            "burst": None,
            "ws_messages_per_second": 1000,
            "ws_max_connections": 100000,
            "max_concurrent_generations": 100000,
        },
    )
    tenant = tenant_create(
        name=f"bench-{uuid.uuid4().hex[:8]}", plan_name="bench", credits=Decimal(10**9)
    )
    # The fake upstream takes its behaviour from the upstream model name.
    for name, behaviour in [("bench-upstream", "tokens-50"), ("bench-slow", SLOW_REPLY)]:
        LLMModel.objects.update_or_create(
            name=name,
            defaults={
                "provider": "openai_compatible",
                "upstream_model": behaviour,
                "base_url": upstream_url,
                "api_key_env": "",
                "input_price_per_1k": Decimal("0.1"),
                "output_price_per_1k": Decimal("0.2"),
                "max_output_tokens": 4096,
            },
        )
    return api_key_create(tenant=tenant)[1]


def start_upstream(behaviour: str = "") -> tuple[subprocess.Popen, int]:
    """The fake OpenAI-compatible upstream (``tests/fakes/upstream.py``) in its own process,
    keeping no record of its requests: (process, port)."""
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port), "--no-record"]
    return start(command + (["--behaviour", behaviour] if behaviour else []), port), port


def start(
    cmd: list[str],
    port: int,
    env=None,
    log=subprocess.DEVNULL,
    cwd: Path = ROOT,
    timeout: float = 30,
) -> subprocess.Popen:
    process = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000)),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{cmd[0]} did not start")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- measurements ------------------------------------------------------------------------


async def direct_ttft(upstream_url: str, runs: int) -> list[float]:
    body = {"model": "tokens-50", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    times = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(runs):
            start = time.perf_counter()
            async with client.stream("POST", f"{upstream_url}/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:") and '"content"' in line:
                        times.append(time.perf_counter() - start)
                        break
    return times


async def open_socket(ws_url: str, key: str):
    ws = await websockets.connect(
        f"{ws_url}/ws/chat?api_key={key}&user_id=bench-{uuid.uuid4().hex[:8]}",
        max_queue=None,
        open_timeout=60,
    )
    while json.loads(await ws.recv())["type"] != "connection_established":
        pass
    return ws


async def open_sockets(ws_url: str, key: str, count: int, batch: int = 100) -> list:
    """Connect in batches: daphne drops handshakes not accepted within 5 s, and every
    connect authenticates and creates a chat."""
    sockets = []
    for start in range(0, count, batch):
        sockets += await asyncio.gather(
            *(open_socket(ws_url, key) for _ in range(min(batch, count - start)))
        )
    return sockets


async def exchange(ws, content: str) -> tuple[float, int]:
    """Send one message; returns (time to first token, tokens) once the answer ended."""
    start = time.perf_counter()
    await ws.send(json.dumps({"content": content, "model": "bench-upstream"}))
    first, tokens = 0.0, 0
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "message_stream_token":
            if not tokens:
                first = time.perf_counter() - start
            tokens += 1
        elif event["type"] == "message_stream_ended":
            return first, tokens
        elif event["type"] == "error":
            raise RuntimeError(event)


async def service_ttft(ws_url: str, key: str, runs: int) -> list[float]:
    ws = await open_socket(ws_url, key)
    times = []
    for i in range(runs):
        # Unique content: never a cache hit. The reply length comes from the model name.
        first, _ = await exchange(ws, f"ttft {i} {uuid.uuid4().hex}")
        times.append(first)
    await ws.close()
    return times


async def cache_hit_ttft(ws_url: str, key: str, runs: int) -> list[float]:
    """The same question again and again: every answer after the first is a cache HIT."""
    ws = await open_socket(ws_url, key)
    question = f"cached {uuid.uuid4().hex}"
    await exchange(ws, question)  # the MISS that fills the cache
    times = [(await exchange(ws, question))[0] for _ in range(runs)]
    await ws.close()
    return times


async def throughput(ws_url: str, key: str, concurrency: int, seconds: float) -> tuple[int, int]:
    sockets = [await open_socket(ws_url, key) for _ in range(concurrency)]
    done = tokens = 0
    stop = time.monotonic() + seconds

    async def worker(ws):
        nonlocal done, tokens
        while time.monotonic() < stop:
            _, count = await exchange(ws, f"load {uuid.uuid4().hex}")
            done += 1
            tokens += count

    await asyncio.gather(*(worker(ws) for ws in sockets))
    for ws in sockets:
        await ws.close()
    return done, tokens


async def held_conversations(ws_url: str, key: str, count: int) -> float:
    """``count`` conversations streaming at once; returns the slowest one's duration."""
    sockets = await open_sockets(ws_url, key, count)

    async def converse(ws):
        start = time.perf_counter()
        await ws.send(json.dumps({"content": uuid.uuid4().hex, "model": "bench-slow"}))
        while (event := json.loads(await ws.recv()))["type"] != "message_stream_ended":
            if event["type"] == "error":
                raise RuntimeError(event)
        return time.perf_counter() - start

    durations = await asyncio.gather(*(converse(ws) for ws in sockets))
    await asyncio.gather(*(ws.close() for ws in sockets))
    return max(durations)


async def idle_memory(ws_url: str, key: str, pid: int, count: int) -> float:
    await asyncio.sleep(1)
    before = rss_kb(pid)
    sockets = await open_sockets(ws_url, key, count)
    await asyncio.sleep(2)
    after = rss_kb(pid)
    await asyncio.gather(*(ws.close() for ws in sockets))
    return (after - before) / count


async def main(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    server_port = free_port()
    upstream, upstream_port = start_upstream("tokens-50")
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    key = await asyncio.to_thread(setup_database, upstream_url)
    server_log = open(args.server_log, "w")  # noqa: SIM115 (kept open for the whole run)
    server = start(
        [
            sys.executable,
            "-m",
            "daphne",
            "-v",
            "0",
            "-b",
            "127.0.0.1",
            "-p",
            str(server_port),
            "chatproject.asgi:application",
        ],
        server_port,
        env=server_env(),
        log=server_log,
    )
    ws_url = f"ws://127.0.0.1:{server_port}"
    db = os.environ.get("DATABASE_URL", "sqlite").split(":")[0]
    print(f"database: {db}; redis: {'yes' if os.environ.get('REDIS_URL') else 'no'}")
    try:
        await service_ttft(ws_url, key, 20)  # warm-up
        direct = await direct_ttft(upstream_url, args.runs)
        service = await service_ttft(ws_url, key, args.runs)
        print(
            f"time to first token: upstream direct p50 {percentile(direct, 50) * 1000:.2f} ms "
            f"p99 {percentile(direct, 99) * 1000:.2f} ms; through the service p50 "
            f"{percentile(service, 50) * 1000:.2f} ms p99 {percentile(service, 99) * 1000:.2f} ms"
        )
        print(
            f"  added by the service: p50 "
            f"{(percentile(service, 50) - percentile(direct, 50)) * 1000:.2f} ms, p99 "
            f"{(percentile(service, 99) - percentile(direct, 99)) * 1000:.2f} ms"
        )
        hits = await cache_hit_ttft(ws_url, key, args.runs)
        print(
            f"cache HIT, time to first token through the service: p50 "
            f"{percentile(hits, 50) * 1000:.2f} ms p99 {percentile(hits, 99) * 1000:.2f} ms"
        )
        done, tokens = await throughput(ws_url, key, 32, args.seconds)
        print(
            f"32 concurrent conversations, 50-token replies, each exchange persisted: "
            f"{done / args.seconds:.0f} exchanges/s, {tokens / args.seconds:.0f} tokens/s"
        )
        for count in args.held:
            slowest = await held_conversations(ws_url, key, count)
            print(
                f"{count} conversations streaming at once (10 s replies): slowest {slowest:.1f} s"
            )
        per_connection = await idle_memory(ws_url, key, server.pid, args.idle)
        print(f"{args.idle} idle WebSocket connections: {per_connection:.1f} KB each (server RSS)")
    finally:
        server.terminate()
        upstream.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="requests per TTFT sample")
    parser.add_argument("--seconds", type=float, default=15.0, help="throughput duration")
    parser.add_argument("--held", type=int, nargs="*", default=[250, 500, 1000])
    parser.add_argument("--idle", type=int, default=5000, help="idle connections to open")
    parser.add_argument(
        "--server-log",
        default=os.path.join(tempfile.gettempdir(), "bench-server.log"),
        help="where the server's output goes",
    )
    asyncio.run(main(parser.parse_args()))
