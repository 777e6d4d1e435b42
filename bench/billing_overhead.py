"""Billing's per-request overhead: rate limit + credit reserve + cache lookup + settle.

Run by hand (it prints figures; it asserts nothing), against PostgreSQL and Redis:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat REDIS_URL=redis://127.0.0.1:6379/9 \
        .venv/bin/python bench/billing_overhead.py [--iterations 2000] [--concurrency 1]

Each iteration is what the engine does around a provider call, in its order, from one
event loop: ``rate_limit_consume`` → ``credits_reserve`` (worker thread) → ``cache_key``
+ ``cache_get`` (a miss) → ``credits_settle`` (worker thread). With ``--concurrency N``,
N such requests of one tenant run at once (they contend for the tenant's balance row).

It works in a throwaway database next to the configured one (``bench_billing_<name>`` on
PostgreSQL, a temporary file on SQLite), created with the migrations and dropped at the
end; the Redis keys it writes are deleted (cache misses write none).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from bench.support import database_version, with_throwaway_database  # noqa: E402
from billing import ratelimit  # noqa: E402
from billing.credits import credits_reserve, credits_settle  # noqa: E402
from billing.models import Plan, Tenant  # noqa: E402
from billing.response_cache import cache_get, cache_key  # noqa: E402
from billing.services import credits_top_up  # noqa: E402
from chatproject.db import db_call  # noqa: E402
from chatproject.redis import get_redis  # noqa: E402

STEPS = ("rate_limit", "reserve", "cache_lookup", "settle", "total")
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Summarise the attached contract in three bullet points."},
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(tenant: Tenant, i: int) -> dict[str, float]:
    clock = time.perf_counter
    t0 = clock()
    await ratelimit.rate_limit_consume(tenant)
    t1 = clock()
    hold = await db_call(
        credits_reserve, tenant_id=tenant.pk, amount=Decimal("0.0125"), reference=f"bench-{i}"
    )
    t2 = clock()
    key = cache_key(
        tenant_id=tenant.pk,
        model="demo/balanced",
        messages=[*MESSAGES, {"role": "user", "content": f"request {i} {uuid.uuid4()}"}],
        temperature=0.7,
        max_tokens=1024,
        no_cache=False,
        tenant_cache_enabled=True,
    )
    await cache_get(key)
    t3 = clock()
    await db_call(credits_settle, hold=hold, charged=Decimal("0.004"))
    t4 = clock()
    return {
        "rate_limit": t1 - t0,
        "reserve": t2 - t1,
        "cache_lookup": t3 - t2,
        "settle": t4 - t3,
        "total": t4 - t0,
    }


def _in_transaction(fn, **kwargs):
    """``fn`` inside a transaction, timed without its commit: the engine runs the hold and
    the settlement in the transactions it commits anyway (audit record, messages)."""
    with transaction.atomic():
        start = time.perf_counter()
        result = fn(**kwargs)
        return result, time.perf_counter() - start


async def one_request_in_engine(tenant: Tenant, i: int) -> dict[str, float]:
    """What the engine pays: rate limit and cache lookup together, the hold and the
    settlement as part of its admission and finalisation transactions."""
    key = cache_key(
        tenant_id=tenant.pk,
        model="demo/balanced",
        messages=[*MESSAGES, {"role": "user", "content": f"request {i} {uuid.uuid4()}"}],
        temperature=0.7,
        max_tokens=1024,
        no_cache=False,
        tenant_cache_enabled=True,
    )
    t0 = time.perf_counter()
    await asyncio.gather(ratelimit.rate_limit_consume(tenant), cache_get(key))
    lookups = time.perf_counter() - t0
    hold, reserve = await db_call(
        _in_transaction,
        credits_reserve,
        tenant_id=tenant.pk,
        amount=Decimal("0.0125"),
        reference=f"bench-{i}",
    )
    _, settle = await db_call(_in_transaction, credits_settle, hold=hold, charged=Decimal("0.004"))
    return {
        "rate_limit": lookups,  # together with the cache lookup
        "reserve": reserve,
        "cache_lookup": 0.0,
        "settle": settle,
        "total": lookups + reserve + settle,
    }


async def run_requests(
    tenant: Tenant, count: int, concurrency: int, start: int, request=one_request
) -> list[dict]:
    results: list[dict] = []
    queue = iter(range(start, start + count))

    async def worker() -> None:
        for i in queue:
            results.append(await request(tenant, i))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def bench(tenant: Tenant, iterations: int, warmup: int, concurrency: int):
    measured = {}
    for mode, request in (("standalone", one_request), ("in the engine", one_request_in_engine)):
        await run_requests(tenant, warmup, concurrency, 0, request)
        began = time.perf_counter()
        measured[mode] = await run_requests(tenant, iterations, concurrency, warmup, request)
        elapsed = time.perf_counter() - began
        print(f"{mode}: {iterations} requests in {elapsed:.2f} s")
    if settings.REDIS_URL:
        await get_redis().delete(ratelimit.rate_key(tenant.pk))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    def run():
        # A plan whose limit is real (the script runs in full) but never reached.
        plan = Plan.objects.create(
            name="bench", display_name="Bench", requests_per_minute=10**7, burst=10**7
        )
        tenant = Tenant.objects.create(name=f"bench-{uuid.uuid4().hex[:8]}", plan=plan)
        credits_top_up(tenant=tenant, amount=Decimal(10**6))
        tenant = Tenant.objects.select_related("plan").get(pk=tenant.pk)
        results = asyncio.run(bench(tenant, args.iterations, args.warmup, args.concurrency))
        tenant.refresh_from_db()
        ledger = sum(tenant.ledger.values_list("amount", flat=True))
        assert ledger == tenant.credit_balance, "the ledger does not match the balance"
        return results, database_version()

    results, version = with_throwaway_database(run, prefix="billing")
    print(
        f"database: {connection.vendor} {version}; "
        f"limits and cache: {'Redis' if settings.REDIS_URL else 'in process'}; "
        f"concurrency {args.concurrency}, {args.iterations} requests after "
        f"{args.warmup} warm-up"
    )
    for mode, measured in results.items():
        print(
            f"\n{mode}: each step on its own"
            if mode == "standalone"
            else f"\n{mode}: "
            "rate limit and cache lookup together, hold and settlement inside the "
            "transactions the engine commits anyway (their commit not counted)"
        )
        print(f"{'step':<14}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        for step in STEPS:
            if mode != "standalone" and step == "cache_lookup":
                continue
            values = [r[step] * 1000 for r in measured]
            label = "limit + cache" if mode != "standalone" and step == "rate_limit" else step
            print(
                f"{label:<14}{percentile(values, 0.5):>10.3f}{percentile(values, 0.99):>10.3f}"
                f"{statistics.fmean(values):>10.3f}"
            )


if __name__ == "__main__":
    main()
