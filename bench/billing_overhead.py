"""Billing's per-request overhead: what rate limits, credits and the response cache add.

Run by hand (it prints figures; it asserts nothing), against PostgreSQL and Redis:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/billing_overhead.py [--requests 2000]

Two measurements, both with the production settings (DEBUG off):

1. **In the engine** (the figure that counts): the real engine (``start_generation`` and
   every event of the answer, with the demo model and no token delay) answers each request
   twice, once as shipped and once with billing's steps replaced by no-ops (the rate limit
   and cache lookup, the concurrent-generation slot (taken and given back), the credit
   hold, the settlement, the cache fill), in alternating
   order. The overhead is the difference: of the two variants' p50 and p99, and the
   median of the per-request differences. It is measured to the answer's last event (what
   a client waits for; the cache fill runs while it goes out) and to the end of the
   engine's stream (the fill done too), for stateless requests (nothing stored, like
   ``/v1/chat/completions``) and for requests stored in a chat (like the WebSocket). Each
   request is new, so every lookup is a miss and every answer is charged and cached.
2. **Step by step**: each billing step on its own, committing on its own (what a step
   would cost outside the engine's transactions), to show where the time goes.

It works in a throwaway database next to the configured one (``bench_billing_<name>`` on
PostgreSQL, a temporary file on SQLite), created with the migrations and dropped at the
end. The Redis keys it writes are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
# Production settings: with DEBUG on, Django records every query, which costs more than
# some of the steps measured here.
os.environ["DEBUG"] = "false"
os.environ.setdefault("SECRET_KEY", "bench-only-secret")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["DEMO_TOKEN_DELAY_MS"] = "0"  # noqa: S105 (a delay, not a secret)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from bench.support import database_version, with_throwaway_database  # noqa: E402
from billing import credits, limits, response_cache  # noqa: E402
from billing.credits import credits_reserve, credits_settle  # noqa: E402
from billing.models import Plan, Tenant  # noqa: E402
from billing.services import credits_top_up  # noqa: E402
from chatproject.db import db_call  # noqa: E402
from chatproject.redis import get_redis  # noqa: E402
from chats.engine import FinishedEvent, GenerationRequest, start_generation  # noqa: E402
from chats.models import Chat, EndUser  # noqa: E402

MODEL = "demo/balanced"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def new_messages(i: int) -> list[dict[str, str]]:
    question = f"Summarise contract {i} ({uuid.uuid4().hex[:8]}) in three bullet points."
    return [SYSTEM, {"role": "user", "content": question}]


# --- 1. in the engine ---------------------------------------------------------------------


async def one_exchange(tenant: Tenant, chat: Chat | None, i: int) -> tuple[float, float]:
    """Seconds from the request to the answer's last event (what the client waits for),
    and to the end of the engine's stream (the cache filled too)."""
    request = GenerationRequest(tenant=tenant, chat=chat, messages=new_messages(i), model=MODEL)
    began = time.perf_counter()
    generation = await start_generation(request)
    answered = None
    async for event in generation.events():
        if isinstance(event, FinishedEvent):
            answered = time.perf_counter()
    ended = time.perf_counter()
    assert answered is not None, "the exchange did not complete"
    return answered - began, ended - began


async def _no_limit_no_lookup(tenant, key):
    return None, None


def _no_hold(*, tenant_id, amount, reference, **_):
    return credits.Pending(value=credits.Hold(tenant_id, Decimal(amount), reference, Decimal(0)))


def _no_settle(*, hold, charged, **_):
    return credits.Pending(value=credits.Settlement(Decimal(0), hold.balance_after))


async def _no_cache_fill(key, answer):
    return None


async def _no_slot(*_, **__):
    return None


@contextmanager
def billing_replaced_by_no_ops():
    """The engine with every billing step a no-op (the engine calls them through their
    modules, so replacing the module attributes reaches it; each replacement must exist
    and be what the engine calls, which the check below and the ledger assertion at the
    end keep honest)."""
    replaced = [
        (response_cache, "rate_limit_and_cache_get", _no_limit_no_lookup),
        (response_cache, "cache_put", _no_cache_fill),
        (limits, "generation_admit", _no_slot),
        (limits, "generation_release", _no_slot),
        (credits, "credits_reserve_pending", _no_hold),
        (credits, "credits_settle_pending", _no_settle),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in replaced]
    for module, name, stand_in in replaced:
        setattr(module, name, stand_in)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


async def bench_engine(tenant: Tenant, chat: Chat | None, requests: int, warmup: int):
    """Pairs of exchanges, one with billing and one without, in alternating order (one
    at a time: the no-ops replace billing for the whole process while they run)."""
    with_billing: list[tuple[float, float]] = []
    without: list[tuple[float, float]] = []
    await check_the_no_ops_replace_every_write(tenant, chat)
    began = time.perf_counter()
    for i in range(warmup + requests):
        if i % 2:
            a = await one_exchange(tenant, chat, i)
            with billing_replaced_by_no_ops():
                b = await one_exchange(tenant, chat, i)
        else:
            with billing_replaced_by_no_ops():
                b = await one_exchange(tenant, chat, i)
            a = await one_exchange(tenant, chat, i)
        if i >= warmup:
            with_billing.append(a)
            without.append(b)
    elapsed = time.perf_counter() - began
    kind = "stored in a chat" if chat else "stateless"
    print(f"in the engine, {kind}: {2 * (warmup + requests)} exchanges in {elapsed:.2f} s")
    return with_billing, without


async def check_the_no_ops_replace_every_write(tenant: Tenant, chat: Chat | None) -> None:
    """Billing's writes happen with billing, and none without: otherwise the engine calls
    something the no-ops miss, and the comparison would understate the overhead."""

    def entries() -> int:
        return tenant.ledger.count() + tenant.holds.count()

    before = await db_call(entries)
    with billing_replaced_by_no_ops():
        await one_exchange(tenant, chat, -1)
    if await db_call(entries) != before:
        raise SystemExit("billing wrote with its steps replaced: update the no-ops")
    await one_exchange(tenant, chat, -2)
    if await db_call(entries) == before:
        raise SystemExit("an exchange with billing wrote nothing: the benchmark is broken")


# --- 2. step by step ----------------------------------------------------------------------

STEPS = ("limit + lookup", "hold", "settle", "cache fill", "total")


async def one_step_by_step(tenant: Tenant, i: int) -> dict[str, float]:
    clock = time.perf_counter
    key = response_cache.cache_key(
        tenant_id=tenant.pk,
        model=MODEL,
        messages=new_messages(i),
        temperature=0.7,
        max_tokens=1024,
        tenant_cache_enabled=True,
    )
    t0 = clock()
    await response_cache.rate_limit_and_cache_get(tenant, key)
    t1 = clock()
    hold = await db_call(
        credits_reserve, tenant_id=tenant.pk, amount=Decimal("0.0125"), reference=f"bench-{i}"
    )
    t2 = clock()
    await db_call(credits_settle, hold=hold, charged=Decimal("0.004"))
    t3 = clock()
    await response_cache.cache_put(key, ANSWER)
    t4 = clock()
    return {
        "limit + lookup": t1 - t0,
        "hold": t2 - t1,
        "settle": t3 - t2,
        "cache fill": t4 - t3,
        "total": t4 - t0,
    }


ANSWER = response_cache.CachedAnswer(
    content="- one\n- two\n- three",
    tokens=["- one", "\n- two", "\n- three"],
    finish_reason="stop",
    prompt_tokens=24,
    completion_tokens=9,
)


async def bench_steps(tenant: Tenant, requests: int, warmup: int) -> list[dict[str, float]]:
    results = []
    began = time.perf_counter()
    for i in range(warmup + requests):
        measured = await one_step_by_step(tenant, 10**9 + i)
        if i >= warmup:
            results.append(measured)
    print(f"step by step: {warmup + requests} requests in {time.perf_counter() - began:.2f} s")
    return results


async def bench(tenant: Tenant, args) -> tuple:
    engine = {
        kind: await bench_engine(tenant, chat, args.requests, args.warmup)
        for kind, chat in (("stateless", None), ("stored in a chat", await new_chat(tenant)))
    }
    steps = await bench_steps(tenant, args.requests, args.warmup)
    if settings.REDIS_URL:
        client = get_redis()
        await client.delete(limits.rate_key(tenant.pk))
        prefix = f"{response_cache.KEY_PREFIX}:rc:{response_cache.KEY_VERSION}:{tenant.pk}:*"
        async for key in client.scan_iter(match=prefix, count=1000):
            await client.delete(key)
    return engine, steps


async def new_chat(tenant: Tenant) -> Chat:
    def create() -> Chat:
        user = EndUser.objects.create(tenant=tenant, external_id="bench")
        return Chat.objects.create(tenant=tenant, end_user=user)

    return await db_call(create)


def report(engine: dict[str, tuple[list, list]], steps: list[dict[str, float]]) -> None:
    for kind, (with_billing, without) in engine.items():
        report_engine(kind, with_billing, without)
    report_steps(steps)


def report_engine(kind: str, with_billing: list, without: list) -> None:
    for index, what in ((0, "to the answer's last event"), (1, "to the end of the stream")):
        billed = [pair[index] * 1000 for pair in with_billing]
        bare = [pair[index] * 1000 for pair in without]
        paired = [a - b for a, b in zip(billed, bare, strict=True)]
        print(f"\nin the engine, {kind}: one exchange, {what}, ms")
        print(f"{'':<26}{'p50':>9}{'p99':>9}{'mean':>9}")
        for label, values in (("with billing", billed), ("billing as no-ops", bare)):
            print(
                f"{label:<26}{percentile(values, 0.5):>9.3f}{percentile(values, 0.99):>9.3f}"
                f"{statistics.fmean(values):>9.3f}"
            )
        print(
            f"{'overhead':<26}"
            f"{percentile(billed, 0.5) - percentile(bare, 0.5):>9.3f}"
            f"{percentile(billed, 0.99) - percentile(bare, 0.99):>9.3f}"
            f"{statistics.fmean(billed) - statistics.fmean(bare):>9.3f}"
        )
        print(f"{'overhead, median of pairs':<26}{statistics.median(paired):>9.3f}")


def report_steps(steps: list[dict[str, float]]) -> None:
    print("\nstep by step: each step on its own, committing on its own, ms")
    print(f"{'step':<26}{'p50':>9}{'p99':>9}{'mean':>9}")
    for step in STEPS:
        values = [r[step] * 1000 for r in steps]
        print(
            f"{step:<26}{percentile(values, 0.5):>9.3f}{percentile(values, 0.99):>9.3f}"
            f"{statistics.fmean(values):>9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    def run():
        # A plan whose limit is real (the script runs in full) but never reached.
        plan = Plan.objects.create(
            name="bench", display_name="Bench", requests_per_minute=10**7, burst=10**7
        )
        tenant = Tenant.objects.create(name=f"bench-{uuid.uuid4().hex[:8]}", plan=plan)
        credits_top_up(tenant=tenant, amount=Decimal(10**6))
        tenant = Tenant.objects.select_related("plan").get(pk=tenant.pk)
        results = asyncio.run(bench(tenant, args))
        tenant.refresh_from_db()
        ledger = sum(tenant.ledger.values_list("amount", flat=True))
        assert ledger == tenant.credit_balance, "the ledger does not match the balance"
        return results, database_version()

    (engine, steps), version = with_throwaway_database(run, prefix="billing")
    print(
        f"\ndatabase: {connection.vendor} {version}; "
        f"limits and cache: {'Redis' if settings.REDIS_URL else 'in process'}; "
        f"{args.requests} requests after {args.warmup} warm-up"
    )
    report(engine, steps)


if __name__ == "__main__":
    main()
