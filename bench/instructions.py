"""Instructions per streaming request, counted by callgrind: a figure that stays put on a
shared machine whose speed drifts by half from one run to the next.

Run by hand (it prints figures; it asserts nothing; it needs valgrind):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/instructions.py [--baseline DIR] [--server daphne uvicorn]

One server process under ``valgrind --tool=callgrind`` with everything on, against the fake
upstream (``bench/gateway.py``'s set-up): warmed up with instrumentation off, then
``--requests`` streaming ``POST /v1/chat/completions`` (8 clients at once, every message
unique) counted, for 5-token answers and for 505-token ones; per token, the difference
over the 500 extra tokens. Slower than the real thing by some fifty times, so the timers
of the server (batch flushes, keep-alives) fire more often than they would: the counts
compare code with code, they are not a time.
"""

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gateway, streaming  # noqa: E402
from bench.support import stop_processes  # noqa: E402

CLIENTS = 8


async def _stream(port: int, key: str, model: str, requests: int) -> None:
    client = gateway.HttpClient(port, "/v1/chat/completions", {"Authorization": f"Bearer {key}"})
    for _ in range(requests):
        body = {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": f"hi {uuid.uuid4().hex}"}],
        }
        await client.stream(body)


async def count(code: Path, kind: str, key: str, model: str, requests: int) -> float:
    """Instructions per request of ``model``'s answers, in millions."""
    port = streaming.free_port()
    out = Path(tempfile.mkdtemp(prefix="bench-callgrind-")) / "callgrind.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}.%p",
    ]
    log = open(os.devnull, "w")  # noqa: SIM115 (closed with the process)
    server = streaming.start(
        command + gateway.server_command(kind, port, code),
        port,
        env=streaming.server_env(),
        log=log,
        cwd=code,
        timeout=300,
    )
    try:
        await asyncio.gather(*(_stream(port, key, model, 3) for _ in range(CLIENTS)))
        subprocess.run(
            ["callgrind_control", "-i", "on", str(server.pid)], capture_output=True, check=True
        )
        await asyncio.gather(
            *(_stream(port, key, model, requests // CLIENTS) for _ in range(CLIENTS))
        )
        subprocess.run(
            ["callgrind_control", "-i", "off", str(server.pid)], capture_output=True, check=True
        )
        subprocess.run(
            ["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True
        )
    finally:
        stop_processes([server])
        log.close()
    total = 0
    for name in glob.glob(f"{out}.*"):
        for line in Path(name).read_text().splitlines():
            if line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
    shutil.rmtree(out.parent)
    return total / (requests // CLIENTS * CLIENTS) / 1e6


async def main(args) -> None:
    upstream, upstream_port = streaming.start_upstream(f"tokens-{gateway.SHORT}")
    try:
        key = await asyncio.to_thread(
            gateway.setup_database, f"http://127.0.0.1:{upstream_port}/v1"
        )
        codes = [("this service", ROOT)] + (
            [("baseline", Path(args.baseline))] if args.baseline else []
        )
        print(f"instructions per request, millions ({args.requests} requests, {CLIENTS} at once):")
        for name, code in codes:
            for kind in args.server:
                short = await count(code, kind, key, "bench-upstream", args.requests)
                long = await count(code, kind, key, "bench-long", max(CLIENTS, args.requests // 5))
                per_token = (long - short) * 1e6 / (gateway.LONG - gateway.SHORT)
                print(
                    f"  {name} ({kind}): {short:.2f} M a {gateway.SHORT}-token answer, "
                    f"{long:.1f} M a {gateway.LONG}-token one: {per_token / 1000:.0f} k a token",
                    flush=True,
                )
    finally:
        stop_processes([upstream])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80, help="5-token requests counted")
    parser.add_argument("--baseline", help="another checkout (git worktree add DIR REF)")
    parser.add_argument("--server", nargs="+", default=["daphne"], choices=("daphne", "uvicorn"))
    asyncio.run(main(parser.parse_args()))
