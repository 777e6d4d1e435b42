"""How the service's cost grows: answer length, stored history, concurrent long streams.

Run by hand (it prints figures; it asserts nothing):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/scaling.py [--lengths 50 500 5000] [--history 10 100 1000 10000] \\
        [--streams 100 500 1000 2000]

One daphne process, everything on, against the fake upstream (``bench/gateway.py``'s set-up):

- answer length: ``POST /v1/chat/completions``, one client: time to first token, time to
  the last, and the server's CPU per token
- stored history: a ``/ws/chat`` chat holding N messages: time to connect (the history
  is loaded then) and to the first token of the next exchange
- concurrent long streams: N clients at once, each a 10 s answer (200 tokens, 50 ms
  apart): the slowest stream's duration, the median time to first token, server CPU
"""

import argparse
import asyncio
import collections
import os
import resource
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gateway, streaming  # noqa: E402
from bench.support import stop_processes  # noqa: E402

SLOW = "tokens-200+delay-50"  # a 10 s answer


def add_models(upstream_url: str, lengths: list[int]) -> None:
    from decimal import Decimal

    from chats.models import LLMModel

    behaviours = {f"bench-{n}": f"tokens-{n}" for n in lengths} | {"bench-slow": SLOW}
    for name, behaviour in behaviours.items():
        LLMModel.objects.update_or_create(
            name=name,
            defaults={
                "provider": "openai_compatible",
                "upstream_model": behaviour,
                "base_url": upstream_url,
                "api_key_env": "",
                "input_price_per_1k": Decimal("0.001"),
                "output_price_per_1k": Decimal("0.001"),
                "max_output_tokens": 100_000,
                "context_window": 1_000_000,
            },
        )


def chat_with_history(key: str, count: int) -> tuple[str, str]:
    """A chat of the key's tenant holding ``count`` messages; (chat id, end user id)."""
    from billing.key_cache import api_key_resolve
    from chats.models import Chat, EndUser, Message

    tenant = api_key_resolve(key).tenant
    user_id = f"history-{uuid.uuid4().hex[:8]}"
    end_user = EndUser.objects.create(tenant=tenant, external_id=user_id)
    chat = Chat.objects.create(tenant=tenant, end_user=end_user, title="history")
    roles = ("user", "assistant")
    Message.objects.bulk_create(
        [
            Message(chat=chat, role=roles[i % 2], content=f"message {i} " + "word " * 20)
            for i in range(count)
        ],
        batch_size=2000,
    )
    return str(chat.id), user_id


async def answer_lengths(server: gateway.Target, lengths: list[int]) -> None:
    print("\nanswer length (POST /v1/chat/completions, one client, 5 answers each):")
    client = server.client()
    for length in lengths:
        server.short_model = f"bench-{length}"
        await client.stream(server.body())  # warm-up
        firsts, lasts = [], []
        cpu = gateway.cpu_seconds(server.pid)
        for _ in range(5):
            start = time.perf_counter()
            answer = await client.stream(server.body())
            firsts.append(answer.first_token)
            lasts.append(time.perf_counter() - start)
        cpu = gateway.cpu_seconds(server.pid) - cpu
        print(
            f"  {length:>6} tokens: first token p50 {gateway.p(firsts, 50):.1f} ms, last "
            f"{gateway.p(lasts, 50):.0f} ms; server CPU {cpu / 5 * 1000:.1f} ms an answer, "
            f"{cpu / (5 * length) * 1e6:.0f} µs a token"
        )
    await client.close()


async def history(port: int, key: str, counts: list[int]) -> None:
    import websockets

    print("\nstored history (/ws/chat, a chat holding N messages):")
    for count in counts:
        chat_id, user_id = await asyncio.to_thread(chat_with_history, key, count)
        connects, firsts = [], []
        for _ in range(3):
            start = time.perf_counter()
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/chat?api_key={key}&user_id={user_id}&chat_id={chat_id}",
                max_queue=None,
                open_timeout=60,
            )
            while gateway.json.loads(await ws.recv())["type"] != "connection_established":
                pass
            connects.append(time.perf_counter() - start)
            for _ in range(3):
                firsts.append((await gateway.ws_exchange(ws)).first_token)
            await ws.close()
        print(
            f"  {count:>6} messages: connect p50 {gateway.p(connects, 50):.1f} ms, first token "
            f"p50 {gateway.p(firsts, 50):.1f} ms"
        )


async def long_streams(server: gateway.Target, counts: list[int]) -> None:
    print("\nconcurrent long streams (10 s answers: 200 tokens 50 ms apart):")
    server.short_model = "bench-slow"
    for count in counts:
        clients = [server.client() for _ in range(count)]
        cpu = gateway.cpu_seconds(server.pid)
        start = time.perf_counter()

        failures: collections.Counter[str] = collections.Counter()

        async def one(client, failures=failures):
            began = time.perf_counter()
            try:
                answer = await client.stream(server.body())
            except (RuntimeError, OSError, asyncio.IncompleteReadError) as error:
                failures[_failure(error)] += 1
                return None
            return answer.first_token, time.perf_counter() - began

        results = await asyncio.gather(*(one(c) for c in clients))
        elapsed = time.perf_counter() - start
        cpu = gateway.cpu_seconds(server.pid) - cpu
        for client in clients:
            await client.close()
        done = [r for r in results if r is not None]
        firsts = [first for first, _ in done]
        slowest = max((duration for _, duration in done), default=0)
        print(
            f"  {count:>6} streams: slowest {slowest:.1f} s, first token p50 "
            f"{gateway.p(firsts, 50) if firsts else 0:.0f} ms, server CPU "
            f"{cpu / elapsed * 100:.0f} %, {count - len(done)} failed"
            + "".join(f"; {n} {why}" for why, n in failures.most_common())
        )


def _failure(error: BaseException) -> str:
    """What a failed stream met: its HTTP status, or how the connection failed."""
    if isinstance(error, RuntimeError) and str(error).startswith("HTTP "):
        return str(error).split(":")[0]
    if isinstance(error, asyncio.IncompleteReadError):
        return "cut mid-answer"
    return type(error).__name__


async def main(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    port = streaming.free_port()
    upstream, upstream_port = streaming.start_upstream()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    processes = [upstream]
    try:
        key = await asyncio.to_thread(gateway.setup_database, upstream_url)
        await asyncio.to_thread(add_models, upstream_url, args.lengths)
        log = open(args.server_log, "w")  # noqa: SIM115 (kept open for the whole run)
        server = streaming.start(
            gateway.server_command("daphne", port), port, env=streaming.server_env(), log=log
        )
        processes.append(server)
        print(
            f"database: {os.environ.get('DATABASE_URL', 'sqlite').split(':')[0]}; redis: "
            f"{'yes' if os.environ.get('REDIS_URL') else 'no'}; load average "
            f"{os.getloadavg()[0]:.1f}"
        )
        target = gateway.Target(
            "service", port, "/v1/chat/completions", {"X-API-Key": key}, pid=server.pid
        )
        if args.lengths:
            await answer_lengths(target, args.lengths)
        if args.history:
            await history(port, key, args.history)
        if args.streams:
            await long_streams(target, args.streams)
    finally:
        stop_processes(processes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[50, 500, 5000])
    parser.add_argument("--history", type=int, nargs="*", default=[10, 100, 1000, 10000])
    parser.add_argument("--streams", type=int, nargs="*", default=[100, 500, 1000, 2000])
    parser.add_argument("--server-log", default=os.devnull, help="where the server's output goes")
    asyncio.run(main(parser.parse_args()))
