"""Gateway benchmark: the service against calling the upstream directly (and LiteLLM's proxy).

Run by hand (it prints figures; it asserts nothing):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench REDIS_URL=redis://127.0.0.1:6379/9 \
        .venv/bin/python bench/gateway.py [--litellm] [--server daphne|uvicorn|granian]

A fake OpenAI-compatible upstream (``tests/fakes/upstream.py``, its own process) streams
5-token answers. One server process, everything on: the governor and its audit record,
credit holds and settlement, the plan's rate limit and generation cap (set high enough
never to refuse), the response cache (every message is unique, so it never answers).
Side by side in one run, each printed with its ratio to the upstream alone:

  1. time to first token, p50 and p99, one client, ``POST /v1/chat/completions`` with
     ``stream: true`` (direct: the same request to the upstream), back to back in blocks
     of 20, one block of each target in turn (in a shuffled order), so that the machine's
     drift within minutes falls on all alike
  2. streaming requests/s at 32 concurrent clients (one keep-alive connection each) and
     the server process's CPU use meanwhile
  3. the same two over ``/ws/chat`` (each exchange stored in a chat)
  4. server CPU time per relayed token: 500-token answers less 5-token answers, divided
     by the extra tokens (over HTTP, and over ``/ws/chat``)
  5. with ``--litellm``: LiteLLM's proxy (installed with pip into a throwaway virtualenv
     under /tmp; one worker, no database) against the same upstream, 1, 2 and 4; the
     newest release, or ``--litellm-version V``'s (to measure again what was measured)

``--server daphne uvicorn granian`` runs one process under each ASGI server;
``--baseline DIR`` also runs the code of another checkout (``git worktree add DIR main``)
on a database of its own, migrated by that code (``<database>_baseline``); ``--rounds N``
alternates the service measurements N times, since figures on a shared machine drift
within minutes (the run ends with how much CPU time the host took from this virtual
machine meanwhile, its ``steal``, and how long a fixed piece of Python work took before
and after: the machine's speed at the moment, which steal alone does not show).
``--profile FILE`` writes py-spy's collapsed stacks (GIL holders) of this checkout's
server under the 32-client load.

The load generators are small clients on raw asyncio streams (HTTP/1.1 here, WebSocket in
``bench/ws_client.py``), so that the client's own cost stays small next to what it
measures; ``--ws-library`` also times ``/ws/chat``'s first tokens through the
``websockets`` package's client, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import streaming, ws_client  # noqa: E402
from bench.support import StealMeter, reference_workload_ms, stop_processes  # noqa: E402

SHORT, LONG = 5, 505  # tokens of an answer; LONG - SHORT relayed tokens price one token
LITELLM_VENV = Path(tempfile.gettempdir()) / "bench-litellm-venv"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- set-up ---------------------------------------------------------------------------------


def setup_database(upstream_url: str) -> str:
    """Migrate; create a tenant whose plan limits are on but never reached, and the
    models (the fake upstream takes its behaviour from the upstream model name)."""
    streaming.create_database_if_missing()
    env = streaming.server_env()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True, env=env
    )
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    import django

    django.setup()
    from decimal import Decimal

    from billing.models import Plan
    from billing.services import api_key_create, tenant_create
    from chats.models import LLMModel

    high = 10_000_000
    Plan.objects.update_or_create(
        name="bench-gateway",
        defaults={
            "display_name": "Gateway benchmark",
            "requests_per_minute": high,
            "burst": high,
            "ws_messages_per_second": high,
            "ws_max_connections": high,
            "max_concurrent_generations": high,
        },
    )
    tenant = tenant_create(
        name=f"bench-{uuid.uuid4().hex[:8]}", plan_name="bench-gateway", credits=Decimal(10**9)
    )
    for name, tokens in [("bench-upstream", SHORT), ("bench-long", LONG)]:
        LLMModel.objects.update_or_create(
            name=name,
            defaults={
                "provider": "openai_compatible",
                "upstream_model": f"tokens-{tokens}",
                "base_url": upstream_url,
                "api_key_env": "",
                "input_price_per_1k": Decimal("0.1"),
                "output_price_per_1k": Decimal("0.2"),
                "max_output_tokens": 4096,
            },
        )
    return api_key_create(tenant=tenant)[1]


def baseline_database(code: Path, upstream_url: str) -> tuple[dict[str, str], str]:
    """Another checkout's database, set up by its own code (its schema may differ from
    this one's, and each code is measured on its own): its environment and key. On
    PostgreSQL a database of its own, named after this run's with ``_baseline``."""
    env = dict(os.environ)
    if env.get("DATABASE_URL", "").startswith("postgres"):
        env["DATABASE_URL"] += "_baseline"
    script = (
        "import sys; sys.path.insert(0, '.'); from bench.gateway import setup_database; "
        "print(setup_database(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, upstream_url],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return env, done.stdout.strip().splitlines()[-1]


def server_command(kind: str, port: int, code: Path = ROOT) -> list[str]:
    where = ["127.0.0.1", str(port)]
    app = "chatproject.asgi:application"
    if kind == "uvicorn" and (code / "chatproject" / "uvicorn_server.py").exists():
        # As the service runs uvicorn (its redacting access log off, as for daphne).
        launcher = ["-m", "chatproject.uvicorn_server", "--host", where[0], "--port", where[1]]
        return [sys.executable, *launcher, "--no-access-log", "--log-level", "warning"]
    commands = {
        # As the service runs daphne (its redacting access log off, as -v 0 has it).
        "daphne": ["-m", "chatproject.server", "-v", "0", "-b", where[0], "-p", where[1], app],
        # A checkout from before chatproject.uvicorn_server: uvicorn's own command.
        "uvicorn": ["-m", "uvicorn", "--host", where[0], "--port", where[1], "--no-access-log"],
        "granian": ["-m", "granian", "--interface", "asgi", "--host", where[0], "--port", where[1]],
    }
    tail = {
        "daphne": [],
        "uvicorn": ["--log-level", "warning", app],
        "granian": ["--workers", "1", app],
    }
    return [sys.executable, *commands[kind], *tail[kind]]


def litellm_venv(version: str | None) -> Path:
    """The throwaway virtualenv of ``litellm[proxy]`` (the newest, or ``version``)."""
    return (
        LITELLM_VENV
        if version is None
        else LITELLM_VENV.with_name(f"{LITELLM_VENV.name}-{version}")
    )


def litellm_python(version: str | None = None) -> Path:
    """The throwaway virtualenv's python, with ``litellm[proxy]`` installed (once)."""
    venv = litellm_venv(version)
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        spec = "litellm[proxy]" + (f"=={version}" if version else "")
        print(f"installing {spec} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True)
    return python


LITELLM_KEY = f"sk-bench-{uuid.uuid4().hex}"  # its master key: it refuses to start without one


def start_litellm(
    upstream_url: str, port: int, log, version: str | None = None
) -> tuple[subprocess.Popen, str]:
    python = litellm_python(version)
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    config = Path(tempfile.mkdtemp(prefix="bench-litellm-")) / "config.yaml"
    models = "\n".join(
        f"  - model_name: {name}\n"
        f"    litellm_params:\n"
        f"      model: openai/tokens-{tokens}\n"
        f"      api_base: {upstream_url}\n"
        f"      api_key: sk-fake"
        for name, tokens in [("bench-upstream", SHORT), ("bench-long", LONG)]
    )
    config.write_text(f"model_list:\n{models}\nlitellm_settings:\n  telemetry: false\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")} | {
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
    }
    command = [str(python.parent / "litellm"), "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    return streaming.start(command, port, env=env, log=log, timeout=180), version


# --- the client -----------------------------------------------------------------------------

_CONTENT = re.compile(rb'"content": ?"(?!")')  # a delta with text (not the empty first one)


@dataclass
class Answer:
    first_token: float  # seconds from the request's first byte written
    tokens: int


class HttpClient:
    """One keep-alive HTTP/1.1 connection; streams an SSE answer, counting token chunks."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.port, self.path = port, path
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\n{extra}"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def stream(self, body: dict) -> Answer:
        if self.writer is None:
            await self._connect()
        payload = json.dumps(body).encode()
        request = f"{self.head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        start = time.perf_counter()
        self.writer.write(request)
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lowered = head.lower()
        first, tokens = 0.0, 0
        body_bytes = b""
        if b"transfer-encoding: chunked" in lowered:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                found = len(_CONTENT.findall(data))
                if found and not tokens:
                    first = time.perf_counter() - start
                tokens += found
                if status != 200:
                    body_bytes += data
        else:
            length = re.search(rb"content-length: *(\d+)", lowered)
            body_bytes = await reader.readexactly(int(length.group(1)) if length else 0)
            tokens = len(_CONTENT.findall(body_bytes))
            first = time.perf_counter() - start
        if b"connection: close" in lowered:
            await self.close()
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body_bytes[:300]!r}")
        return Answer(first, tokens)


@dataclass
class Target:
    """Something to measure over HTTP: the upstream itself, LiteLLM or the service."""

    name: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the server process whose CPU time is read
    short_model: str = "bench-upstream"
    long_model: str = "bench-long"

    def client(self) -> HttpClient:
        return HttpClient(self.port, self.path, self.headers)

    def body(self, long: bool = False) -> dict:
        return {
            "model": self.long_model if long else self.short_model,
            "stream": True,
            # Unique: never a cache hit.
            "messages": [{"role": "user", "content": f"bench {uuid.uuid4().hex}"}],
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and every process under it."""
    total, parents = 0.0, {pid}
    stats = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats.append((int(entry.name), (entry / "stat").read_text()))
            except OSError:
                continue
    children: dict[int, list[tuple[int, list[str]]]] = {}
    for proc_id, text in stats:
        fields = text.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append((proc_id, fields))
        if proc_id == pid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    while parents:
        found = set()
        for parent in parents:
            for proc_id, fields in children.get(parent, ()):
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                found.add(proc_id)
        parents = found
    return total


async def interleaved(sample, targets: list, runs: int, warmup: int) -> list[list[float]]:
    """``runs`` first tokens of each of ``targets``, taken in blocks of back-to-back
    requests (``BLOCK``, after two that warm the target up again), one block of each target
    in turn, so that the machine's drift (its speed moves by half within minutes) falls on
    all alike; the order of the blocks shuffled every turn, since the first requests after
    another target's (LiteLLM's, which goes on working after its answer) are slower.
    ``sample(target)`` makes a function that times one answer."""
    timers = [await sample(target) for target in targets]
    for timer in timers:
        for _ in range(warmup):
            await timer()
    times: list[list[float]] = [[] for _ in targets]
    order = list(range(len(targets)))
    shuffle = random.Random(0).shuffle  # the same orders in every run
    while len(times[0]) < runs:
        shuffle(order)
        for index in order:
            for _ in range(2):
                await timers[index]()
            for _ in range(min(BLOCK, runs - len(times[index]))):
                times[index].append(await timers[index]())
    return times


BLOCK = 20  # back-to-back first tokens of one target, between the other targets' blocks


async def http_timer(target: Target):
    client = target.client()
    return lambda: _first_token(client.stream(target.body()))


async def ws_timer(target: tuple[int, str, bool]):
    port, key, library = target
    ws = await ws_open(port, key, library=library)
    return lambda: _first_token(ws_exchange(ws))


async def _first_token(answer) -> float:
    return (await answer).first_token


async def load(target: Target, concurrency: int, seconds: float) -> tuple[float, float, int]:
    """(requests/s, the server's CPU use in cores, failed requests) at ``concurrency``."""
    clients = [target.client() for _ in range(concurrency)]
    done = failed = 0
    stop = time.monotonic() + seconds

    async def worker(client: HttpClient) -> None:
        nonlocal done, failed
        while time.monotonic() < stop:
            try:
                await client.stream(target.body())
                done += 1
            except (RuntimeError, OSError, asyncio.IncompleteReadError):
                failed += 1
                await client.close()

    cpu = cpu_seconds(target.pid) if target.pid else 0.0
    began = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - began
    cpu = (cpu_seconds(target.pid) - cpu) if target.pid else 0.0
    for client in clients:
        await client.close()
    return done / elapsed, cpu / elapsed, failed


async def per_extra_token(pid: int, answer, requests: int, concurrency: int = 4) -> float:
    """Server CPU µs per extra token: ``answer(worker, long)`` gets one answer, of 5 tokens
    or (``long``) of 505; ``requests`` of each, ``concurrency`` at a time; the long ones' CPU
    less the short ones', over the extra tokens."""
    rounds = max(1, requests // concurrency)

    async def run(long: bool) -> float:
        before = cpu_seconds(pid)

        async def worker(index: int) -> None:
            for _ in range(rounds):
                await answer(index, long)

        await asyncio.gather(*(worker(index) for index in range(concurrency)))
        return cpu_seconds(pid) - before

    short_cpu = await run(False)
    long_cpu = await run(True)
    return (long_cpu - short_cpu) / (rounds * concurrency * (LONG - SHORT)) * 1e6


async def cpu_per_token(target: Target, requests: int, concurrency: int = 4) -> float:
    """Server CPU µs per token the upstream sent, over HTTP. (Counted as the upstream sends
    them: the service's output guard may join several into one.)"""
    assert target.pid is not None
    clients = [target.client() for _ in range(concurrency)]
    try:
        return await per_extra_token(
            target.pid,
            lambda index, long: clients[index].stream(target.body(long)),
            requests,
            concurrency,
        )
    finally:
        for client in clients:
            await client.close()


# --- WebSocket ------------------------------------------------------------------------------


async def ws_open(port: int, key: str, *, library: bool = False):
    """A socket to ``/ws/chat``: the small client of :mod:`bench.ws_client`, or with
    ``library`` the ``websockets`` package's (what the README's examples use)."""
    path = f"/ws/chat?api_key={key}&user_id=bench-{uuid.uuid4().hex[:8]}"
    if library:
        url = f"ws://127.0.0.1:{port}{path}"
        ws = await websockets.connect(url, max_queue=None, open_timeout=60)
    else:
        ws = await ws_client.WebSocket.connect(port, path)
    while event_type(await ws.recv()) != b"connection_established":
        pass
    return ws


_EVENT_TYPE = re.compile(rb'\{\s*"type"\s*:\s*"([a-z_]+)"')


def event_type(message: str | bytes) -> bytes:
    """A server event's type, read from its start (the type is its first field) rather
    than by decoding all of it, as the HTTP client counts tokens."""
    found = _EVENT_TYPE.match(message.encode() if isinstance(message, str) else message)
    return found.group(1) if found else b""


async def ws_exchange(ws, model: str = "bench-upstream") -> Answer:
    start = time.perf_counter()
    await ws.send(json.dumps({"content": f"bench {uuid.uuid4().hex}", "model": model}))
    first, tokens = 0.0, 0
    while True:
        message = await ws.recv()
        kind = event_type(message)
        if kind == b"message_stream_token":
            if not tokens:
                first = time.perf_counter() - start
            tokens += 1
        elif kind == b"message_stream_ended":
            return Answer(first, tokens)
        elif kind == b"error":
            raise RuntimeError(message[:300])


async def ws_load(
    port: int, key: str, pid: int, concurrency: int, seconds: float
) -> tuple[float, float, int]:
    sockets = [await ws_open(port, key) for _ in range(concurrency)]
    done = failed = 0
    stop = time.monotonic() + seconds

    async def worker(ws) -> None:
        nonlocal done, failed
        while time.monotonic() < stop:
            try:
                await ws_exchange(ws)
                done += 1
            except RuntimeError:
                failed += 1

    cpu = cpu_seconds(pid)
    began = time.perf_counter()
    await asyncio.gather(*(worker(ws) for ws in sockets))
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(pid) - cpu
    await asyncio.gather(*(ws.close() for ws in sockets))
    return done / elapsed, cpu / elapsed, failed


async def ws_cpu_per_token(port: int, key: str, pid: int, requests: int) -> float:
    """Server CPU µs per token relayed over ``/ws/chat``. Each exchange on a socket (and
    chat) of its own, so that both runs pay for the same connects and the long answers are
    not sent back as the next ones' history."""

    async def answer(index: int, long: bool) -> None:
        ws = await ws_open(port, key)
        await ws_exchange(ws, "bench-long" if long else "bench-upstream")
        await ws.close()

    return await per_extra_token(pid, answer, requests)


# --- the run --------------------------------------------------------------------------------


def p(values: list[float], pct: float) -> float:
    return streaming.percentile(values, pct) * 1000


@dataclass
class Row:
    name: str
    ttft_p50: float = 0.0
    ttft_p99: float = 0.0
    rps: float = 0.0
    cpu: float = 0.0
    failed: int = 0
    per_token: float | None = None


def print_table(rows: list[Row], direct: Row, tokens: int) -> None:
    print()
    print(f"{'':34}" + "".join(f"{row.name:>26}" for row in rows))

    def line(label: str, cell) -> None:
        print(f"{label:34}" + "".join(f"{cell(row):>26}" for row in rows))

    line("time to first token p50, 1 client", lambda r: f"{r.ttft_p50:.2f} ms")
    line(
        "  added to the upstream's",
        lambda r: "" if r is direct else f"+{r.ttft_p50 - direct.ttft_p50:.2f} ms",
    )
    line("time to first token p99", lambda r: f"{r.ttft_p99:.2f} ms")
    line(
        "streaming requests/s, 32 clients",
        lambda r: f"{r.rps:,.1f}" if r is direct else f"{r.rps:,.1f} (1/{direct.rps / r.rps:.0f})",
    )
    line("  server CPU meanwhile", lambda r: "" if r is direct else f"{r.cpu * 100:.0f} %")
    line(
        "  server CPU per request",
        lambda r: "" if r is direct or not r.rps else f"{r.cpu / r.rps * 1000:.2f} ms",
    )
    line("  failed requests", lambda r: str(r.failed))
    line(
        f"server CPU per token ({LONG - SHORT} more)",
        lambda r: "" if r.per_token is None else f"{r.per_token:.1f} µs",
    )
    print(f"({tokens}-token answers; ratio: the upstream's requests/s to the target's)")
    if len(rows) >= 3 and rows[1].name.startswith("LiteLLM"):
        litellm, service = rows[1], rows[2]
        print(
            f"this service against {litellm.name}: {service.rps / litellm.rps:.2f}x the "
            f"requests/s, {service.ttft_p50 - litellm.ttft_p50:+.2f} ms to the first token"
        )


def profiler(pid: int, args) -> subprocess.Popen:
    """py-spy sampling who holds the GIL in ``pid`` during the load, as collapsed stacks."""
    command = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--gil",
        "--nonblocking",
        "-r",
        "200",
        "-f",
        "raw",
    ]
    command += ["-d", str(int(args.seconds)), "-p", str(pid), "-o", args.profile]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def measure(target: Target, args, times: list[float]) -> Row:
    spy = profiler(target.pid, args) if args.profile and target.name.startswith("this") else None
    rps, cpu, failed = await load(target, 32, args.seconds)
    if spy is not None:
        await asyncio.to_thread(spy.wait)
    per_token = await cpu_per_token(target, args.long_requests) if target.pid else None
    return Row(target.name, p(times, 50), p(times, 99), rps, cpu, failed, per_token)


@dataclass
class Service:
    """One server process of the service: this checkout's code or another's, under one
    ASGI server."""

    name: str
    code: Path
    kind: str
    port: int = 0
    process: subprocess.Popen | None = None
    key: str = ""  # the benchmark tenant's, in this code's database
    env: dict[str, str] = field(default_factory=dict)  # DATABASE_URL: that database


def services(args) -> list[Service]:
    codes = [("this service", ROOT)]
    if args.baseline:
        codes.append(("baseline", Path(args.baseline).resolve()))
    return [
        Service(name if len(args.server) == 1 else f"{name} ({kind})", code, kind)
        for name, code in codes
        for kind in args.server
    ]


def print_ws(rows: list[Row], direct: Row) -> None:
    print("\n/ws/chat, each exchange stored in a chat:")
    for row in rows:
        print(
            f"  {row.name}: time to first token p50 {row.ttft_p50:.2f} ms "
            f"(+{row.ttft_p50 - direct.ttft_p50:.2f} ms over the upstream's), p99 "
            f"{row.ttft_p99:.2f} ms; {row.rps:,.1f} exchanges/s at 32 concurrent "
            f"(1/{direct.rps / row.rps:.0f} of the upstream's), server CPU {row.cpu * 100:.0f} % "
            f"({row.cpu / row.rps * 1000:.2f} ms an exchange), {row.failed} failed; "
            f"{row.per_token:.1f} µs a relayed token"
        )


async def measure_ws(service: Service, key: str, args, times: list[float]) -> Row:
    pid = service.process.pid
    rps, cpu, failed = await ws_load(service.port, key, pid, 32, args.seconds)
    per_token = await ws_cpu_per_token(service.port, key, pid, args.long_requests)
    return Row(service.name, p(times, 50), p(times, 99), rps, cpu, failed, per_token)


async def main(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    litellm_port = streaming.free_port()
    upstream, upstream_port = streaming.start_upstream(f"tokens-{SHORT}")
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    processes = [upstream]
    log = open(args.server_log, "w")  # noqa: SIM115 (kept open for the whole run)
    try:
        key = await asyncio.to_thread(setup_database, upstream_url)
        databases = {ROOT: ({}, key)}
        servers = services(args)
        for service in servers:
            if service.code not in databases:
                databases[service.code] = await asyncio.to_thread(
                    baseline_database, service.code, upstream_url
                )
            service.env, service.key = databases[service.code]
            service.port = streaming.free_port()
            service.process = streaming.start(
                server_command(service.kind, service.port, service.code),
                service.port,
                env={**streaming.server_env(), **service.env},
                log=log,
                cwd=service.code,
            )
            processes.append(service.process)
        db = os.environ.get("DATABASE_URL", "sqlite").split(":")[0]
        print(
            f"database: {db}; redis: {'yes' if os.environ.get('REDIS_URL') else 'no'}; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        others = [
            Target(
                "upstream direct",
                upstream_port,
                "/v1/chat/completions",
                short_model=f"tokens-{SHORT}",
                long_model=f"tokens-{LONG}",
            )
        ]
        if args.litellm:
            litellm, version = await asyncio.to_thread(
                start_litellm, upstream_url, litellm_port, log, args.litellm_version
            )
            processes.append(litellm)
            others.append(
                Target(
                    f"LiteLLM {version}",
                    litellm_port,
                    "/v1/chat/completions",
                    {"Authorization": f"Bearer {LITELLM_KEY}"},
                    pid=litellm.pid,
                )
            )
        service_targets = [
            Target(
                service.name,
                service.port,
                "/v1/chat/completions",
                {"Authorization": f"Bearer {service.key}"},
                pid=service.process.pid,
            )
            for service in servers
        ]
        # First tokens: every target's requests interleaved, over both transports.
        speeds = [reference_workload_ms()]
        steal = StealMeter()
        http_times = await interleaved(
            http_timer, [*others, *service_targets], args.runs, args.warmup
        )
        ws_targets = [(s.port, s.key, False) for s in servers]
        if args.ws_library:  # the same first tokens through the websockets package's client
            ws_targets += [(s.port, s.key, True) for s in servers]
        ws_times = (
            [] if args.no_ws else await interleaved(ws_timer, ws_targets, args.runs, args.warmup)
        )
        print("  measured the first tokens, interleaved", flush=True)
        steals = [("the first tokens", steal.share())]
        steal = StealMeter()
        rows = []
        for target, times in zip(others, http_times, strict=False):
            rows.append(await measure(target, args, times))
            print(f"  measured {target.name}", flush=True)
        service_times = http_times[len(others) :]
        ws_rows = []
        for round_ in range(args.rounds):
            for index, (service, target) in enumerate(zip(servers, service_targets, strict=True)):
                name = service.name if args.rounds == 1 else f"{service.name} #{round_ + 1}"
                target = dataclasses.replace(target, name=name)
                rows.append(await measure(target, args, service_times[index]))
                if not args.no_ws:
                    ws_rows.append(await measure_ws(service, service.key, args, ws_times[index]))
                    ws_rows[-1].name = name
                print(f"  measured {name}", flush=True)
        steals.append(("the loads", steal.share()))
        speeds.append(reference_workload_ms())
        print_table(rows, rows[0], SHORT)
        if ws_rows:
            print_ws(ws_rows, rows[0])
        for service, times in zip(servers, ws_times[len(servers) :], strict=False):
            print(
                f"  {service.name}, the websockets package's client: time to first token p50 "
                f"{p(times, 50):.2f} ms (+{p(times, 50) - rows[0].ttft_p50:.2f} ms), "
                f"p99 {p(times, 99):.2f} ms"
            )
        if all(share is not None for _, share in steals):
            print(
                "CPU time the host took from this machine (steal): "
                + ", ".join(f"{share * 100:.0f} % during {what}" for what, share in steals)
            )
        print(
            f"the machine's speed: a reference workload took {speeds[0]:.1f} ms before the "
            f"first tokens, {speeds[1]:.1f} ms after the loads (bench/support.py; on a slower "
            "moment, more)"
        )
    finally:
        stop_processes(processes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="requests per TTFT sample")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput run")
    parser.add_argument(
        "--long-requests", type=int, default=40, help="requests per CPU-per-token sample"
    )
    parser.add_argument("--litellm", action="store_true", help="also measure LiteLLM's proxy")
    parser.add_argument(
        "--litellm-version",
        metavar="VERSION",
        help="that release of litellm[proxy] (a virtualenv of its own), not the newest",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="write py-spy's collapsed stacks (--gil) of the service under load to FILE",
    )
    parser.add_argument(
        "--server",
        nargs="+",
        choices=("daphne", "uvicorn", "granian"),
        default=["daphne"],
        help="the ASGI server(s) to run the service under, side by side",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout of the code (git worktree add DIR REF) measured alongside",
    )
    parser.add_argument("--rounds", type=int, default=1, help="service measurements, alternated")
    parser.add_argument("--no-ws", action="store_true", help="skip /ws/chat")
    parser.add_argument(
        "--ws-library",
        action="store_true",
        help="also time /ws/chat's first tokens through the websockets package's client",
    )
    parser.add_argument(
        "--server-log",
        default=os.path.join(tempfile.gettempdir(), "bench-gateway-server.log"),
        help="where the servers' output goes",
    )
    asyncio.run(main(parser.parse_args()))
