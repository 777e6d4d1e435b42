"""Where a first token's time goes: ``POST /v1/chat/completions`` phase by phase, timed
inside the server. Run by hand (it prints figures; it asserts nothing):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/first_token.py [--requests 1000]

The same set-up as ``bench/gateway.py`` (its fake upstream streaming 5 tokens, its tenant,
everything on), one client sending requests back to back. The server (daphne, as the
service runs it) is started with probes on the steps of a request, from the moment daphne
has read it to the write of its first token; each probe notes the time and the CPU time
of the server's thread so far. Printed per phase, p50 over the requests: the time it took,
the server's CPU time in it, and what is left (the server waiting: on Redis, PostgreSQL,
the upstream, or for a core). The probes cost a little themselves (a few µs each).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (probe, what has happened when it fires), in the order a request passes them
PHASES = [
    ("read", "daphne has read the request"),
    ("view", "the view starts: API key"),
    ("admission", "body parsed; admission starts"),
    ("redis", "Redis call sent (rate limit, cache, slot)"),
    ("governor", "governor done (beside Redis)"),
    ("statement", "Redis answered; admission statement built"),
    ("upstream", "upstream call starts (statement sent)"),
    ("sent", "upstream request written"),
    ("bytes", "upstream's first bytes read"),
    ("token", "upstream's first token parsed"),
    ("stored", "admission statement answered"),
    ("admitted", "admitted: the view goes on"),
    ("status", "status line sent"),
    ("first", "first token written"),
]


# --- the server side: daphne with probes --------------------------------------------------


def serve(argv: list[str], out: str) -> None:
    """daphne (``chatproject.server``) with probes; what they noted goes to ``out`` at exit."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    # First, as when it runs as the server's main module: it sets uvloop's policy before
    # daphne makes its event loop (Django's setup imports daphne).
    import chatproject.server as server  # isort: skip

    from aiohttp import client_proto, client_reqrep

    import chatproject.asgi  # noqa: F401 (sets Django up, as the server would)
    from chats.engine import admission, store
    from chats.providers import http_provider
    from chats.transports import openai_api
    from governor import gate

    notes: list[tuple[str, int, int]] = []

    def note(probe: str) -> None:
        notes.append((probe, time.perf_counter_ns(), time.thread_time_ns()))

    def before(owner, name: str, probe: str) -> None:
        original = getattr(owner, name)

        def probed(*args, **kwargs):
            note(probe)
            return original(*args, **kwargs)

        setattr(owner, name, probed)

    def after(owner, name: str, probe: str, *, awaited: bool = False) -> None:
        original = getattr(owner, name)
        if awaited:

            async def probed(*args, **kwargs):
                result = await original(*args, **kwargs)
                note(probe)
                return result
        else:

            def probed(*args, **kwargs):
                result = original(*args, **kwargs)
                note(probe)
                return result

        setattr(owner, name, probed)

    before(server.WebRequest, "process", "read")
    before(openai_api, "authenticate", "view")
    before(openai_api, "start_generation", "admission")
    before(admission.redis_multiplexed, "send_queued", "redis")
    after(gate, "governor_assess_input", "governor")
    run = store._run

    async def probed_run(sql, params, doing, subject):
        if doing != "admitting":  # finalising (the request before's, maybe)
            return await run(sql, params, doing, subject)
        note("statement")
        result = await run(sql, params, doing, subject)
        note("stored")
        return result

    store._run = probed_run
    after(openai_api, "start_generation", "admitted", awaited=True)
    after(client_reqrep.ClientRequest, "send", "sent", awaited=True)
    before(client_proto.ResponseHandler, "data_received", "bytes")

    stream = http_provider.HTTPProvider.stream

    async def probed_stream(self, request):
        note("upstream")
        items = stream(self, request)
        try:
            async for item in items:
                note("token")
                yield item
        finally:
            await items.aclose()

    http_provider.HTTPProvider.stream = probed_stream

    reply = server.WebRequest.handle_reply

    def probed_reply(self, message):
        if message.get("type") == "http.response.start":
            note("status")
        elif message.get("body"):
            note("first")
        return reply(self, message)

    server.WebRequest.handle_reply = probed_reply

    def write() -> None:
        with open(out, "w") as file:
            file.writelines(f"{probe} {wall} {cpu}\n" for probe, wall, cpu in notes)

    atexit.register(write)
    sys.argv = ["daphne", *argv]
    server.ServerCommandLine.entrypoint()


# --- the client side ------------------------------------------------------------------------


def requests_of(path: str) -> list[dict[str, tuple[int, int]]]:
    """Each request's probes (the first time each fired), from daphne's read on."""
    requests: list[dict[str, tuple[int, int]]] = []
    for line in Path(path).read_text().splitlines():
        probe, wall, cpu = line.split()
        if probe == "read":
            requests.append({})
        if requests and probe not in requests[-1]:
            requests[-1][probe] = (int(wall), int(cpu))
    return [r for r in requests if all(probe in r for probe, _ in PHASES)]


def report(requests: list[dict[str, tuple[int, int]]]) -> None:
    def p50(values) -> float:
        return statistics.median(values) / 1e6

    print(f"\n{len(requests)} requests; p50 of each phase (ms):")
    print(f"{'phase, up to':46}{'time':>8}{'CPU':>8}{'waiting':>9}")
    previous = PHASES[0][0]
    for probe, label in PHASES[1:]:
        wall = p50([r[probe][0] - r[previous][0] for r in requests])
        cpu = p50([r[probe][1] - r[previous][1] for r in requests])
        print(f"  {label:44}{wall:8.3f}{cpu:8.3f}{max(wall - cpu, 0):9.3f}")
        previous = probe
    wall = p50([r["first"][0] - r["read"][0] for r in requests])
    cpu = p50([r["first"][1] - r["read"][1] for r in requests])
    print(f"{'read to first token written':46}{wall:8.3f}{cpu:8.3f}{max(wall - cpu, 0):9.3f}")


async def main(args) -> None:
    from bench import gateway, streaming
    from bench.support import StealMeter, stop_processes

    upstream, upstream_port = streaming.start_upstream(f"tokens-{gateway.SHORT}")
    processes = [upstream]
    handle, out = tempfile.mkstemp(prefix="bench-first-token-")  # the server writes it
    os.close(handle)
    try:
        key = await asyncio.to_thread(
            gateway.setup_database, f"http://127.0.0.1:{upstream_port}/v1"
        )
        port = streaming.free_port()
        where = ["-v", "0", "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"]
        command = [sys.executable, __file__, "--serve", out, "--", *where]
        with open(args.server_log, "w") as log:
            server = streaming.start(command, port, env=streaming.server_env(), log=log)
            processes.append(server)
            target = gateway.Target(
                "service", port, "/v1/chat/completions", {"Authorization": f"Bearer {key}"}
            )
            client = target.client()
            for _ in range(args.warmup):
                await client.stream(target.body())
            steal = StealMeter()
            times = [(await client.stream(target.body())).first_token for _ in range(args.requests)]
            share = steal.share()
            await client.close()
            stop_processes([server])
            processes.remove(server)
        print(
            f"time to first token at the client, p50: {statistics.median(times) * 1000:.2f} ms"
            + (f"; the host took {share * 100:.0f} % of the CPU time (steal)" if share else "")
        )
        report(requests_of(out)[args.warmup :])
    finally:
        stop_processes(processes)
        Path(out).unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[4:], sys.argv[2])  # --serve OUT -- daphne's arguments
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--requests", type=int, default=1000)
        parser.add_argument("--warmup", type=int, default=200)
        parser.add_argument(
            "--server-log",
            default=os.path.join(tempfile.gettempdir(), "bench-first-token-server.log"),
        )
        asyncio.run(main(parser.parse_args()))
