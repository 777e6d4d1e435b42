"""What the per-request input and log checks cost, each side by side in one run with what
it replaced. Run by hand:

    .venv/bin/python bench/request_checks.py

- the body reader (``parse_json``: depth bound before parsing, no NaN, no NUL or lone
  surrogates) against a bare ``json.loads``, on the bodies the endpoints get;
- an access log line: daphne's own writer (to /dev/null) against the service's, which
  decodes and redacts it and sends it through logging and the redacting formatter (to
  /dev/null).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
os.environ.setdefault("DEBUG", "true")

import django  # noqa: E402

django.setup()

import logging  # noqa: E402

from daphne.access import AccessLogGenerator  # noqa: E402

from chatproject.errors import ApiError  # noqa: E402
from chatproject.json_body import parse_json  # noqa: E402
from chatproject.server import RedactingAccessLog  # noqa: E402

SENTENCE = "The fleet service stores each bike's position in PostgreSQL every minute. "


def bodies() -> dict[str, dict]:
    def turn(index: int) -> dict:
        return {"role": "user" if index % 2 == 0 else "assistant", "content": SENTENCE * 3}

    metadata = {"actionType": "customer_support", "senderId": "user_12345"}
    return {
        "one message (/api/ai/chat)": {
            "messages": [{"role": "user", "content": "Write a haiku about coding"}],
            "governorMetadata": metadata,
        },
        "40 turns (/v1/chat/completions)": {
            "model": "demo",
            "messages": [turn(index) for index in range(40)],
            "temperature": 0.7,
        },
        "40 turns, ASCII-escaped emoji": {
            "model": "demo",
            "messages": [{**turn(index), "content": SENTENCE + "😀"} for index in range(40)],
        },
        "100 KB of documents (/api/v1/chat/stream)": {
            "message": "Draft the manifesto.",
            "existing_documents": {f"DOC{i}.md": SENTENCE * 130 for i in range(10)},
        },
        "1 MB document (knowledge)": {"path": "BIG.md", "content": SENTENCE * 14000},
    }


def encoded() -> dict[str, bytes]:
    return {name: json.dumps(body).encode() for name, body in bodies().items()}


def timed(function, argument, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        function(argument)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def access_log() -> None:
    devnull = open(os.devnull, "w")  # noqa: SIM115 (for the whole run)
    for handler in logging.getLogger().handlers:  # the settings' console handler
        handler.setStream(devnull)
    daphne_log, ours = AccessLogGenerator(devnull), RedactingAccessLog(None)
    lines = {
        "POST /api/ai/chat": "/api/ai/chat",
        "GET with a query string": "/api/v1/chats/user/u1?limit=10&offset=0",
        "GET with ?api_key=": "/api/v1/chats/user/u1?api_key=sk_live_" + "a" * 32,
    }
    print(f"\n{'access log line':44} {'daphne µs':>14} {'redacted µs':>14} {'added µs':>9}")
    for name, path in lines.items():
        details = {"client": "127.0.0.1:5000", "method": "GET", "path": path, "status": 200}
        details["size"] = 1234
        for _ in range(2):  # warm up, then measure the two alternately
            plain = timed(lambda d: daphne_log("http", "complete", d), details, 20000)
            redacted = timed(lambda d: ours("http", "complete", d), details, 20000)
        print(f"{name:44} {plain:14.1f} {redacted:14.1f} {redacted - plain:9.1f}")


def main() -> None:
    bodies_table()
    access_log()


def bodies_table() -> None:
    print(f"{'body':44} {'bytes':>9} {'json.loads µs':>14} {'parse_json µs':>14} {'added µs':>9}")
    for name, raw in encoded().items():
        rounds = 2000 if len(raw) < 200_000 else 100
        for _ in range(2):  # warm up, then measure the two alternately
            bare, checked = timed(json.loads, raw, rounds), timed(parse_json, raw, rounds)
        print(f"{name:44} {len(raw):9} {bare:14.1f} {checked:14.1f} {checked - bare:9.1f}")
    deep = b"[" * 10_000 + b"]" * 10_000
    print(f"{'refused: nested 10,000 deep':44} {len(deep):9} {'':14} ", end="")
    print(f"{timed(_refused, deep, 200):14.1f}")


def _refused(raw: bytes) -> None:
    with contextlib.suppress(ApiError):  # the refusal is what is timed
        parse_json(raw)


if __name__ == "__main__":
    main()
