"""Fault benchmark: PostgreSQL and Redis outages under load, and what clients got.

Run by hand (it prints figures; it asserts nothing):

    .venv/bin/python bench/faults.py                  # this checkout
    .venv/bin/python bench/faults.py --before main    # and a git ref, side by side

It starts its own redis-server and PostgreSQL cluster on free ports (never the shared
services; the PostgreSQL server binaries must be installed), and per code tree two daphne
processes in production mode (DEBUG off) on them, then:

1. PostgreSQL outage: streams of every format (the four SSE formats, the OpenAI API,
   the WebSocket) are running when the database stops for ``--outage`` seconds, so their
   finalisation meets the outage; new requests are sent throughout it. Reports how each
   stream ended (and how long after the outage began), the status of the requests sent
   during it, and afterwards whether the ledger still equals the balance, the holds left
   open and the answers kept.
2. Redis outage of the same length: WebSocket connects during it (HTTP 500 or an error
   event and a close), requests of a tenant on the free plan (burst 20) and how many got
   through, streams running across it; after Redis returns, the share of WebSocket
   connects that fail, and whether an event fans out between the two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import stop_processes  # noqa: E402
from tests import outages  # noqa: E402
from tests.stream_endings import FORMATS, Ending, fan_out, stream  # noqa: E402

SECRET = "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789"  # noqa: S105
ASGI_APP = "chatproject.asgi:application"
BURST = 200  # WebSocket connects at once, to fill the channel layer's pools
STORED = ("docgen", "aisdk", "ws")  # formats whose exchanges are kept in a chat


def checkout(ref: str) -> Path:
    """The tree of git ``ref``, extracted to a temporary directory."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True, capture_output=True
    ).stdout
    target = Path(tempfile.mkdtemp(prefix="faults-tree-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


class Deployment:
    """One code tree on the shared throwaway services: its database, two servers."""

    def __init__(self, label: str, tree: Path, redis: outages.RedisServer, pg, db_index: int):
        self.label, self.tree = label, tree
        self.dbname = f"faults_{label}"
        pg.create_database(self.dbname)
        self.database_url = pg.url(self.dbname)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": redis.url(db_index),
            "DEBUG": "false",
            "SECRET_KEY": SECRET,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "false",
            "LOG_LEVEL": "WARNING",
            "DEMO_TOKEN_DELAY_MS": "25",
            "PYTHONUNBUFFERED": "1",
        }
        self.manage("migrate", "--noinput")
        self.key = self.manage(
            "create_tenant", "load", "--plan", "enterprise", "--credits", "100000"
        )
        self.limited_key = self.manage(
            "create_tenant", "limited", "--plan", "free", "--credits", "100"
        )
        # Bursts of WebSocket connects spread over tenants, each under its 50-connection cap.
        self.burst_keys = [
            self.manage("create_tenant", f"burst{i}", "--plan", "enterprise", "--credits", "10")
            for i in range(BURST // 40)
        ]
        self.servers: list[tuple[str, subprocess.Popen]] = []
        self.logs = Path(tempfile.mkdtemp(prefix=f"faults-{label}-"))

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.tree,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def start(self) -> None:
        for _ in range(2):
            port = outages.free_port()
            log = (self.logs / f"daphne-{port}.log").open("w")
            process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-p", str(port), ASGI_APP],
                cwd=self.tree,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            self.servers.append((f"http://127.0.0.1:{port}", process))
        for url, process in self.servers:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"server {url} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_processes([process for _, process in self.servers])
        self.servers = []

    def url(self, i: int) -> str:
        return self.servers[i % len(self.servers)][0]

    def books(self) -> dict:
        """What the database says once the dust settled."""
        return outages.books(self.database_url)


def summary(endings: list[Ending]) -> str:
    counts = collections.Counter(
        e.kind
        + (f" {e.code}" if e.code and e.kind != "complete" else "")
        + (f" (HTTP {e.status})" if e.kind == "refused" and e.status else "")
        for e in endings
    )
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common()) or "none"


def by_format(endings: list[Ending]) -> str:
    groups = collections.defaultdict(list)
    for ending in endings:
        groups[ending.format].append(ending)
    return "; ".join(f"{fmt}: {summary(group)}" for fmt, group in groups.items())


async def postgres_outage(dep: Deployment, pg, outage: float, per_format: int) -> dict:
    prompt = "[demo:tokens=120] outage"  # 3 s at 25 ms a token
    async with httpx.AsyncClient(timeout=60) as client:
        streams = [
            asyncio.create_task(
                stream(client, dep.url(i), dep.key, fmt, prompt, deadline=outage + 30)
            )
            for i, fmt in enumerate(fmt for fmt in FORMATS for _ in range(per_format))
        ]
        await asyncio.sleep(1.5)  # admitted and streaming
        pg.stop()
        stopped = time.monotonic()
        during: list[Ending] = []
        while time.monotonic() - stopped < outage:
            batch = [
                stream(client, dep.url(i), dep.key, fmt, "hello", deadline=20)
                for i, fmt in enumerate(FORMATS)
            ]
            during += await asyncio.gather(*batch)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - stopped) % 1.0))
        pg.start()
        endings = await asyncio.gather(*streams)
    await asyncio.sleep(10)  # background finalisation retries, if any
    ended_in = [e.seconds - 1.5 for e in endings if e.ended]
    return {
        "streams": summary(endings),
        "streams by format": by_format(endings),
        "hung (no end within outage + 30 s)": sum(e.kind == "hung" for e in endings),
        "cut without an end": sum(e.kind == "cut" for e in endings),
        "streams ended, seconds after the outage began (max; 1.5 s of tokens were left)": round(
            max(ended_in), 1
        )
        if ended_in
        else None,
        "requests during the outage": by_format(during),
        "seconds to the answer of a request during the outage (max)": round(
            max(e.seconds for e in during), 1
        ),
        "HTTP 500 during the outage": sum(e.status == 500 for e in during),
        "books after": dep.books(),
    }


LIMITED_REQUESTS = 60


async def limited_request(client: httpx.AsyncClient, dep: Deployment, i: int) -> int:
    """One request of the free-plan tenant, half async views and half DRF ones."""
    path = "/v1/models" if i % 2 else "/api/v1/chats/user/u"
    try:
        response = await client.get(
            dep.url(i // 2) + path, headers={"X-API-Key": dep.limited_key}, timeout=20
        )
    except httpx.HTTPError:
        return 0
    return response.status_code


async def connect_once(ws_url: str, key: str) -> tuple[str, float]:
    """One WebSocket connect and how long its answer took: ``ok``, ``HTTP <status>``,
    ``error <code>`` or ``dropped``."""
    started = time.monotonic()
    return await _connect_once(ws_url, key), time.monotonic() - started


async def _connect_once(ws_url: str, key: str) -> str:
    try:
        async with asyncio.timeout(10):
            async with websockets.connect(
                f"{ws_url}/ws/chat?user_id=faults", additional_headers={"X-API-Key": key}
            ) as socket:
                event = json.loads(await socket.recv())
                if event["type"] == "connection_established":
                    return "ok"
                return f"error {event.get('code')}"
    except websockets.InvalidStatus as exc:
        return f"HTTP {exc.response.status_code}"
    except (OSError, TimeoutError, websockets.WebSocketException):
        return "dropped"


async def connect_burst(dep: Deployment) -> str:
    """``BURST`` WebSocket connects at once, over both processes: what they got."""
    keys = dep.burst_keys
    outcomes = await asyncio.gather(
        *(
            connect_once(dep.url(i).replace("http://", "ws://", 1), keys[i % len(keys)])
            for i in range(BURST)
        )
    )
    counts = collections.Counter(outcome for outcome, _ in outcomes)
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


async def fan_out_works(dep: Deployment) -> bool:
    """Two sockets on one chat in the two processes: one's message reaches the other."""
    ws = [dep.url(i).replace("http://", "ws://", 1) for i in range(2)]
    try:
        return (await fan_out(ws[0], ws[1], dep.key))["status"] == "complete"
    except (OSError, TimeoutError, websockets.WebSocketException, KeyError):
        return False


async def redis_outage(dep: Deployment, redis: outages.RedisServer, outage: float, after: float):
    prompt = "[demo:tokens=120] outage"
    # A burst of connects first, so each process's channel-layer pool holds many
    # connections when Redis goes away (those at the bottom are reached only by bursts).
    baseline = await connect_burst(dep)
    async with httpx.AsyncClient(timeout=60) as client:
        streams = [
            asyncio.create_task(
                stream(client, dep.url(i), dep.key, fmt, prompt, deadline=outage + 30)
            )
            for i, fmt in enumerate(fmt for fmt in FORMATS for _ in range(2))
        ]
        await asyncio.sleep(1.5)
        redis.stop()
        stopped = time.monotonic()
        limited = await asyncio.gather(
            *(limited_request(client, dep, i) for i in range(LIMITED_REQUESTS))
        )
        connects: list[tuple[str, float]] = []
        while time.monotonic() - stopped < outage:
            connects += await asyncio.gather(
                *(
                    connect_once(dep.url(i).replace("http://", "ws://", 1), dep.key)
                    for i in range(2)
                )
            )
            await asyncio.sleep(0.5)
        redis.start()
        endings = await asyncio.gather(*streams)
        returned = time.monotonic()
        recovery: list[tuple[float, str]] = []
        while time.monotonic() - returned < after:
            batch = await asyncio.gather(
                *(
                    connect_once(dep.url(i).replace("http://", "ws://", 1), dep.key)
                    for i in range(8)
                )
            )
            recovery += [(time.monotonic() - returned, outcome) for outcome, _ in batch]
        burst = await connect_burst(dep)
        fan_out = await fan_out_works(dep)
    failed_after = [t for t, outcome in recovery if outcome != "ok"]
    first_5s = [o for t, o in recovery if t < 5]
    return {
        "streams running across it": summary(endings),
        "WebSocket connects during the outage": ", ".join(
            f"{n} {k}" for k, n in collections.Counter(c for c, _ in connects).most_common()
        ),
        "HTTP 500 handshakes during the outage": sum(c == "HTTP 500" for c, _ in connects),
        "seconds to the answer of a connect during the outage (max)": round(
            max(t for _, t in connects), 1
        ),
        "free-plan requests admitted at once during the outage (burst 20, 2 processes)": (
            f"{sum(200 <= s < 300 for s in limited)} of {len(limited)}"
            f" ({collections.Counter(limited).most_common()})"
        ),
        f"connects failing in the {after:.0f} s after Redis returned": (
            f"{len(failed_after)} of {len(recovery)}"
            f" ({100 * len(failed_after) / max(1, len(recovery)):.1f} %),"
            f" {100 * sum(o != 'ok' for o in first_5s) / max(1, len(first_5s)):.1f} %"
            " in the first 5 s,"
            + (f" last failure {max(failed_after):.1f} s after" if failed_after else "")
        ),
        f"a burst of {BURST} connects at once before the outage": baseline,
        f"a burst of {BURST} connects at once after it": burst,
        "fan-out between the processes afterwards": fan_out,
        "books after": dep.books(),
    }


def report(label: str, title: str, figures: dict) -> None:
    print(f"\n[{label}] {title}")
    for name, value in figures.items():
        print(f"  {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REF", help="also measure this git ref (e.g. main)")
    parser.add_argument("--outage", type=float, default=12.0, help="seconds each outage lasts")
    parser.add_argument("--per-format", type=int, default=4, help="streams per format")
    parser.add_argument("--after", type=float, default=15.0, help="seconds watched after Redis")
    parser.add_argument("--only", choices=("postgres", "redis"), help="one of the two outages")
    args = parser.parse_args()
    if outages.missing():
        sys.exit(f"cannot run: {outages.missing()}")
    trees = [("before", checkout(args.before))] if args.before else []
    trees.append(("after", ROOT))
    redis, pg = outages.RedisServer(), outages.PostgresCluster()
    redis.start()
    pg.start()
    try:
        for index, (label, tree) in enumerate(trees):
            dep = Deployment(label, tree, redis, pg, index)
            dep.start()
            try:
                print(f"\n=== {label}: {tree} (2 daphne processes, {args.outage:.0f} s outages)")
                if args.only != "redis":
                    figures = asyncio.run(postgres_outage(dep, pg, args.outage, args.per_format))
                    report(label, "PostgreSQL outage", figures)
                if args.only != "postgres":
                    figures = asyncio.run(redis_outage(dep, redis, args.outage, args.after))
                    report(label, "Redis outage", figures)
            finally:
                dep.stop()
                print(f"  (server logs: {dep.logs})")
    finally:
        redis.close()
        pg.close()


if __name__ == "__main__":
    main()
