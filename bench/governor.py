"""The governor's detectors and output guard: quality on the labelled corpus, speed per KB,
and what guarding an answer while it streams costs its time to first token. Run by hand
(it prints figures; it asserts nothing):

    .venv/bin/python bench/governor.py [--before REV] [--requests 200] [--delay-ms 20]

1. **Quality**: precision and recall per kind on tests/governor/corpus.py (the corpus,
   and the sets written after the detectors: held out, fresh 1-4), for the detectors as
   they are and as they were at ``--before`` (a git revision; default: the last one before
   the injection rules and the new secret detectors), side by side.
2. **Speed**: evaluation time per KB of the corpus's text, before and after, in the same
   run: the detectors alone, and the whole input evaluation (every rule) now.
3. **Output guard**: CPU per token of ``StreamGuard.feed``, and time to first token in the
   real engine (demo model, ``--delay-ms`` between tokens, like a hosted model's pace,
   and with no delay), with the guard off, neutralising markup only (the default policy),
   redacting every kind but e-mail as well, and every kind, requests of the variants
   interleaved. In a throwaway database (SQLite unless ``DATABASE_URL`` is set), dropped
   at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import types
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
os.environ["DEBUG"] = "false"
os.environ.setdefault("SECRET_KEY", "bench-only-secret")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from bench.support import database_version, with_throwaway_database  # noqa: E402
from billing.models import Plan, Tenant  # noqa: E402
from billing.services import credits_top_up  # noqa: E402
from chatproject.db import db_call  # noqa: E402
from chats.engine import GenerationRequest, TokenEvent, start_generation  # noqa: E402
from governor import detectors, injection  # noqa: E402
from governor.evaluation import EvaluationInput, Policy, evaluate  # noqa: E402
from governor.services import policy_update  # noqa: E402
from governor.stream_guard import StreamGuard  # noqa: E402
from tests.governor.corpus import (  # noqa: E402
    CORPUS,
    FRESH,
    FRESH_2,
    FRESH_3,
    FRESH_4,
    HELD_OUT,
    KINDS,
)
from tests.governor.corpus import evaluate as corpus_evaluate  # noqa: E402

BEFORE = "64f2a9f"  # the last revision before the injection rules and the new detectors
INJECTION_BEFORE = "bf3af25"  # the last one before the injection rule was rebuilt in families
ALL_KINDS = detectors.KIND_PRIORITY


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def detectors_at(revision: str) -> types.ModuleType:
    """governor/detectors.py as it was at ``revision``."""
    return module_at(revision, "governor/detectors.py")


def module_at(revision: str, path: str) -> types.ModuleType:
    """``path`` as it was at ``revision``, as a module of its own."""
    source = subprocess.check_output(["git", "show", f"{revision}:{path}"], cwd=ROOT, text=True)
    module = types.ModuleType(f"{Path(path).stem}_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)  # noqa: S102
    return module


def detect_before(module: types.ModuleType):
    scan = module.scan.__wrapped__  # not its cache

    def detect(text: str):
        return [(f.kind, f.start, f.end) for f in scan(text)]

    return detect


def detect_now(text: str):
    found = [(f.kind, f.start, f.end) for f in detectors.scan_uncached(text)]
    found += [(m.kind, m.start, m.end) for m in injection.find_prompt_injection(text)]
    found += [(m.kind, m.start, m.end) for m in injection.find_markup(text)]
    return found


# --- 1. and 2. ------------------------------------------------------------------------------


def quality(before) -> None:
    sets = (
        ("Corpus", CORPUS),
        ("Held out", HELD_OUT),
        ("Fresh", FRESH),
        ("Fresh 2", FRESH_2),
        ("Fresh 3", FRESH_3),
        ("Fresh 4", FRESH_4),
    )
    for name, samples in sets:
        old = corpus_evaluate(samples, detector=before)
        new = corpus_evaluate(samples, detector=detect_now)
        size = sum(len(s.text) for s in samples)
        print(f"{name}: {len(samples)} messages, {size:,} characters")
        print(f"  {'kind':18} {'labelled':>8}   {'before P / R':>13}   {'after P / R':>13}")
        for kind in KINDS:
            labelled = new[kind].true_positives + new[kind].false_negatives
            b, a = old[kind], new[kind]
            print(
                f"  {kind:18} {labelled:8}   {b.precision:5.2f} / {b.recall:4.2f}   "
                f"{a.precision:5.2f} / {a.recall:4.2f}"
            )


def injection_by_message(injection_before: types.ModuleType) -> None:
    """The prompt-injection rule per message: attempts found, clean messages flagged."""
    print("\nPrompt injection per message (before = the rule at --injection-before):")
    sets = (("Corpus", CORPUS), ("Held out", HELD_OUT), ("Fresh", FRESH))
    sets += (("Fresh 2", FRESH_2), ("Fresh 3", FRESH_3), ("Fresh 4", FRESH_4))
    for name, samples in sets:
        figures = []
        for find in (injection_before.find_prompt_injection, injection.find_prompt_injection):
            attempts = [s for s in samples if "prompt_injection" in s.labels]
            found = sum(1 for s in attempts if _finds_label(find, s))
            clean = [s for s in samples if "prompt_injection" not in s.labels]
            flagged = sum(1 for s in clean if find(s.text))
            figures.append(f"{found}/{len(attempts)} found, {flagged}/{len(clean)} clean flagged")
        print(f"  {name:8}  before: {figures[0]:30}  after: {figures[1]}")


def _finds_label(find, sample) -> bool:
    def detector(text):
        return [(m.kind, m.start, m.end) for m in find(text)]

    return corpus_evaluate([sample], detector=detector)["prompt_injection"].true_positives > 0


def per_kb(run, texts: list[str], rounds: int) -> float:
    """Microseconds per KB of ``texts`` for ``run`` over each, best of ``rounds``."""
    size_kb = sum(len(t.encode()) for t in texts) / 1024
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for text in texts:
            run(text)
        best = min(best, time.perf_counter() - began)
    return best / size_kb * 1e6


def speed(before, injection_before: types.ModuleType, rounds: int) -> None:
    texts = [s.text for s in CORPUS]
    policy = Policy.default()

    def whole_evaluation(text: str) -> None:
        detectors.scan.cache_clear()
        evaluate(EvaluationInput(text, None), policy)

    print(f"\nEvaluation time per KB of the corpus (best of {rounds} rounds):")
    for name, run in (
        ("prompt-injection rule before", injection_before.find_prompt_injection),
        ("prompt-injection rule now", injection.find_prompt_injection),
        ("detectors before", before),
        ("detectors now (the two new kinds too)", detect_now),
        ("whole input evaluation now (every rule)", whole_evaluation),
    ):
        print(f"  {name:42} {per_kb(run, texts, rounds):6.0f} µs/KB")


# --- 3. the output guard ----------------------------------------------------------------------


def words(text: str) -> list[str]:
    import re

    return re.findall(r"\s*\S+|\s+", text)


def guard_cpu() -> None:
    answers = [words(s.text) for s in CORPUS]
    tokens = sum(len(a) for a in answers)
    variants = {
        "markup only (default policy)": {"neutralise_markup": True},
        "all kinds but e-mail, markup": {"redact": NO_EMAIL, "neutralise_markup": True},
        "every kind and markup": {"redact": ALL_KINDS, "neutralise_markup": True},
    }
    print(f"\nOutput guard CPU per token ({tokens} tokens of the corpus, best of 5):")
    for name, options in variants.items():
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for answer in answers:
                guard = StreamGuard(**options)
                for token in answer:
                    guard.feed(token)
                guard.flush()
            best = min(best, time.perf_counter() - began)
        print(f"  {name:30} {best / tokens * 1e6:6.1f} µs/token")


NO_EMAIL = [kind for kind in ALL_KINDS if kind != "email"]
VARIANTS = {
    "guard off": {"markup_action": "flag", "output_redact": []},
    "markup only (default)": {},
    "all but e-mail, markup": {"output_redact": NO_EMAIL},
    "every kind and markup": {"output_redact": list(ALL_KINDS)},
}


def make_tenants() -> dict[str, Tenant]:
    plan = Plan.objects.get_or_create(
        name="bench", defaults={"requests_per_minute": None, "burst": None}
    )[0]
    tenants = {}
    for name, policy in VARIANTS.items():
        tenant = Tenant.objects.create(name=f"bench-{uuid.uuid4().hex[:8]}", plan=plan)
        credits_top_up(tenant=tenant, amount=Decimal(10**9), note="bench")
        if policy:
            policy_update(tenant=tenant, **policy)
        tenants[name] = tenant
    return tenants


async def first_token(tenant: Tenant, delay_ms: int) -> float:
    said = f"Please refund order 4411 to jane.doe@example.com, ref {uuid.uuid4().hex[:8]}"
    request = GenerationRequest(
        tenant=tenant,
        messages=[{"role": "user", "content": f"{said} [demo:delay={delay_ms}]"}],
        model="demo/balanced",
        use_cache=False,
    )
    began = time.perf_counter()
    generation = await start_generation(request)
    async with contextlib.aclosing(generation.events()) as events:
        async for event in events:
            if isinstance(event, TokenEvent):
                # The client leaves here: the rest is not waited for (stored as cancelled).
                return time.perf_counter() - began
    raise AssertionError("no token came")


async def ttft(tenants: dict[str, Tenant], requests: int, delay_ms: int) -> dict[str, list]:
    times: dict[str, list[float]] = {name: [] for name in tenants}
    for i in range(requests + 20):
        order = list(tenants.items())
        order = order[i % len(order) :] + order[: i % len(order)]
        for name, tenant in order:
            value = await first_token(tenant, delay_ms)
            if i >= 20:  # warm-up
                times[name].append(value)
    return times


def guard_ttft(requests: int, delay_ms: int) -> None:
    def run():
        tenants = asyncio.run(db_call(make_tenants))
        print(f"\nTime to first token in the engine ({database_version()}, {requests} each):")
        for delay in (0, delay_ms):
            times = asyncio.run(ttft(tenants, requests, delay))
            base = statistics.median(times["guard off"])
            print(f"  {delay} ms between the model's tokens:")
            for name, values in times.items():
                p50, p99 = statistics.median(values), percentile(values, 0.99)
                print(
                    f"    {name:24} p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms"
                    f"  (+{(p50 - base) * 1000:.2f} ms p50 over guard off)"
                )

    with_throwaway_database(run, prefix="governor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git revision to compare with")
    parser.add_argument(
        "--injection-before", default=INJECTION_BEFORE, help="revision of injection.py to compare"
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=20)
    args = parser.parse_args()
    settings.RESPONSE_CACHE_TTL_SECONDS = 0
    before = detect_before(detectors_at(args.before))
    injection_before = module_at(args.injection_before, "governor/injection.py")
    quality(before)
    injection_by_message(injection_before)
    speed(before, injection_before, args.rounds)
    guard_cpu()
    guard_ttft(args.requests, args.delay_ms)


if __name__ == "__main__":
    main()
