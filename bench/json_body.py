"""What the request body reader's checks cost: ``parse_json`` (depth bound before parsing,
no NaN, no NUL or lone surrogates) against a bare ``json.loads``, side by side in one run,
on the bodies the endpoints get. Run by hand:

    .venv/bin/python bench/json_body.py
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

from chatproject.errors import ApiError  # noqa: E402
from chatproject.json_body import parse_json  # noqa: E402

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


def timed(function, raw: bytes, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        function(raw)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def main() -> None:
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
