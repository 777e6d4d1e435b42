"""Upstream client benchmark: what streaming an answer costs the HTTP client, per library.

Run by hand (it prints figures; it asserts nothing):

    .venv/bin/python bench/upstream_client.py

The fake OpenAI-compatible upstream (``tests/fakes/upstream.py``) runs in
its own process; this process streams ``--requests`` answers through each client at 8
concurrent, reading them line by line as the providers do (``iter_sse``), and reports its
own CPU time per request (5-token answers) and per token (500-token answers less 5-token
ones), side by side in one run, alternated ``--rounds`` times:

- httpx: ``AsyncClient.stream`` + ``aiter_lines`` (what tenants' HTTP tools use)
- httpcore: httpx's transport alone, lines split by hand
- aiohttp: ``ClientSession.post`` + ``content`` line iteration (what the providers use)
- floor: an ``asyncio.Protocol`` on httptools' parser (llhttp), kept-alive connections, no
  timeouts, no TLS, no error handling: what any client must at least spend, for scale
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpcore
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gateway, streaming  # noqa: E402

SHORT, LONG = 5, 505


def request(tokens: int) -> dict:
    return {
        "model": f"tokens-{tokens}",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello"}],
    }


def body(tokens: int) -> bytes:
    return json.dumps(request(tokens)).encode()


AUTH = {"authorization": "Bearer x"}
HEADERS = {"content-type": "application/json", **AUTH}


async def with_httpx(url: str, tokens: int, requests: int) -> int:
    lines = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> None:
            nonlocal lines
            async with client.stream("POST", url, content=body(tokens), headers=HEADERS) as r:
                async for line in r.aiter_lines():
                    lines += line.startswith("data:")

        await run(one, requests)
    return lines


async def with_httpcore(url: str, tokens: int, requests: int) -> int:
    lines = 0
    async with httpcore.AsyncConnectionPool() as pool:

        async def one() -> None:
            nonlocal lines
            async with pool.stream("POST", url, content=body(tokens), headers=HEADERS) as r:
                buffer = b""
                async for chunk in r.aiter_stream():
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    lines += sum(line.startswith(b"data:") for line in complete)

        await run(one, requests)
    return lines


async def with_aiohttp(url: str, tokens: int, requests: int) -> int:
    import aiohttp

    lines = 0
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal lines
            async with session.post(url, data=body(tokens), headers=HEADERS) as r:
                async for line in r.content:
                    lines += line.startswith(b"data:")

        await run(one, requests)
    return lines


async def with_small_client(url: str, tokens: int, requests: int) -> int:
    parsed = httpx.URL(url)
    idle: list[gateway.HttpClient] = []
    found = 0

    async def one() -> None:
        nonlocal found
        client = idle.pop() if idle else gateway.HttpClient(parsed.port, parsed.path, AUTH)
        found += (await client.stream(request(tokens))).tokens
        idle.append(client)

    await run(one, requests)
    for client in idle:
        await client.close()
    return found


async def run(one, requests: int, concurrency: int = 8) -> None:
    async def worker() -> None:
        for _ in range(requests // concurrency):
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


CLIENTS = {
    "httpx": with_httpx,
    "httpcore": with_httpcore,
    "aiohttp": with_aiohttp,
    "small": with_small_client,
}


async def cpu(client, url: str, tokens: int, requests: int) -> float:
    start = time.process_time()
    await client(url, tokens, requests)
    return time.process_time() - start


async def main(args) -> None:
    upstream, port = streaming.start_upstream()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
    try:
        for client in CLIENTS.values():  # warm-up: imports, connections
            await client(url, SHORT, 16)
        for _ in range(args.rounds):
            for name, client in CLIENTS.items():
                short = await cpu(client, url, SHORT, args.requests)
                long = await cpu(client, url, LONG, args.requests)
                per_request = short / args.requests * 1e6
                per_token = (long - short) / (args.requests * (LONG - SHORT)) * 1e6
                results[name].append((per_request, per_token))
    finally:
        upstream.terminate()
    print(f"client CPU, {args.requests} requests per sample, 8 concurrent ({args.rounds} rounds)")
    print(f"{'':10}{'per 5-token request':>28}{'per extra token':>24}")
    for name, samples in results.items():
        requests = " / ".join(f"{r:.0f}" for r, _ in samples)
        tokens = " / ".join(f"{t:.1f}" for _, t in samples)
        print(f"{name:10}{requests + ' µs':>28}{tokens + ' µs':>24}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
