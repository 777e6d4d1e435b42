"""Concurrency claims tested with real concurrency: threads against PostgreSQL, separate
OS processes against Redis."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from billing.credits import credits_reserve, credits_settle_pending
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.sweeper import holds_sweep
from chatproject.errors import ApiError, ErrorCode
from tests.factories import make_tenant

ROOT = Path(__file__).resolve().parents[2]
D = Decimal

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL"
)
redis_only = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL")


def run_in_threads(count: int, work) -> list:
    """Run ``work(i)`` in ``count`` threads released at once; results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as error:
            results[i] = error
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def books(tenant: Tenant) -> tuple[Decimal, Decimal]:
    total = sum(LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True))
    return total, Tenant.objects.get(pk=tenant.pk).credit_balance


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_fifty_threads_reserve_and_exactly_ten_succeed():
    tenant = make_tenant(credits=15)  # covers exactly 10 holds of 1.5

    def reserve(i: int):
        return credits_reserve(tenant_id=tenant.pk, amount=D("1.5"), reference=f"r{i}")

    results = run_in_threads(50, reserve)
    refused = [r for r in results if isinstance(r, ApiError)]
    assert all(r.code == ErrorCode.INSUFFICIENT_CREDITS for r in refused)
    assert len(refused) == 40
    assert len([r for r in results if not isinstance(r, Exception)]) == 10
    total, balance = books(tenant)
    assert balance == 0 and total == balance
    assert CreditHold.objects.filter(tenant=tenant, status="open").count() == 10


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_settles_racing_the_sweeper_charge_what_each_request_is_told():
    tenant = make_tenant(credits=100)
    holds = [
        credits_reserve(tenant_id=tenant.pk, amount=D(2), reference=f"r{i}") for i in range(30)
    ]
    lapsed = timezone.now() - timedelta(seconds=settings.HOLD_STALE_AFTER_SECONDS + 60)
    CreditHold.objects.filter(pk__in=[h.hold_id for h in holds[:15]]).update(
        lease_expires_at=lapsed
    )

    def work(i: int):
        if i < 4:  # four sweepers at once
            return ("swept", holds_sweep().closed)
        if i < 34:  # every request ends, having used 1 of its 2
            settled = credits_settle_pending(hold=holds[i - 4], charged=D(1)).result()
            return ("settled", settled.charged)
        return ("reserved", credits_reserve(tenant_id=tenant.pk, amount=D(1), reference="x"))

    results = run_in_threads(44, work)
    assert not [r for r in results if isinstance(r, Exception)], results
    swept = sum(r[1] for r in results if r[0] == "swept")
    assert swept <= 15
    told = [r[1] for r in results if r[0] == "settled"]
    assert told.count(D(1)) == 30 - swept and told.count(0) == swept
    # Whether a settle or the sweeper came first, each request paid what it was told.
    total, balance = books(tenant)
    assert balance == total == D(100) - 10 - sum(told)
    closed = CreditHold.objects.filter(pk__in=[h.hold_id for h in holds])
    assert set(closed.values_list("status", "charged")) <= {("settled", D(1)), ("released", 0)}
    releases = LedgerEntry.objects.filter(tenant=tenant, kind=LedgerEntry.Kind.RELEASE)
    assert releases.count() == swept


# --- Redis, from separate processes -----------------------------------------------------

HAMMER = r"""
import asyncio, json, os, sys, time
import django
django.setup()
from billing.models import Plan, Tenant
from billing import limits
from chatproject.errors import ApiError

mode, tenant_id, parties, count, name = sys.argv[1:6]
# Burst 200, then one every 10 s: the test ends long before a refill matters.
plan = Plan(name="p", requests_per_minute=6, burst=200, ws_max_connections=10)
tenant = Tenant(pk=int(tenant_id), name="t", plan=plan)

async def consume():
    try:
        await limits.request_admit(tenant)
        return True
    except ApiError:
        return False

async def acquire(i):
    try:
        await limits.connection_admit(tenant, f"{name}-{i}")
        return True
    except ApiError:
        return False

async def start_together():
    # A barrier in Redis: go when every process has arrived.
    from chatproject.redis import get_redis
    client, key = get_redis(), f"test:barrier:{tenant_id}:{mode}"
    await client.incr(key)
    await client.expire(key, 60)
    while int(await client.get(key)) < int(parties):
        await asyncio.sleep(0.001)

async def main():
    await start_together()
    if mode == "rate":
        # Paced rounds, so the two processes' requests interleave for a while rather
        # than one spending the whole burst before the other has opened a connection.
        results = []
        for _ in range(int(count) // 20):
            results += await asyncio.gather(*(consume() for _ in range(20)))
            await asyncio.sleep(0.005)
    else:
        results = await asyncio.gather(*(acquire(i) for i in range(int(count))))
    print(json.dumps(sum(results)))

asyncio.run(main())
"""


def hammer(mode: str, tenant_id: int, counts: list[int], env: dict | None = None) -> list[int]:
    """Run one hammering process per count, all starting at the same moment."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(f"test:barrier:{tenant_id}:{mode}")
    client.close()
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "chatproject.settings", **(env or {})}
    environment.setdefault("DEBUG", "true")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, mode, str(tenant_id), str(len(counts)), str(n), f"p{i}"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, n in enumerate(counts)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert "WARNING" not in err, err  # nothing failed open
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


@pytest.fixture
def redis_tenant_id():
    """An id no other test or run uses, with its keys cleared."""
    tenant_id = 2_000_000_000 + time.monotonic_ns() % 100_000_000
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = [f"billing:rl:{tenant_id}", f"billing:ws:{tenant_id}"]
    keys += [f"test:barrier:{tenant_id}:{mode}" for mode in ("rate", "slots")]
    client.delete(*keys)
    yield tenant_id
    client.delete(*keys)
    client.close()


@redis_only
def test_two_processes_admit_one_burst_between_them(redis_tenant_id):
    admitted = hammer("rate", redis_tenant_id, [300, 300])
    assert all(n > 0 for n in admitted), admitted  # both really took part
    assert abs(sum(admitted) - 200) <= 1, admitted


@redis_only
def test_two_processes_get_exactly_the_connection_cap(redis_tenant_id):
    granted = hammer("slots", redis_tenant_id, [8, 7])  # 15 = cap of 10 + 5
    assert sum(granted) == 10, granted
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert client.zcard(f"billing:ws:{redis_tenant_id}") == 10
    client.close()


@redis_only
def test_slots_of_dead_processes_are_reclaimed(redis_tenant_id):
    granted = hammer("slots", redis_tenant_id, [8, 7], env={"WS_CONNECTION_SLOT_TTL_SECONDS": "1"})
    assert sum(granted) == 10
    # Those processes are gone without releasing anything; their slots lapse.
    time.sleep(1.2)
    again = hammer("slots", redis_tenant_id, [6, 6], env={"WS_CONNECTION_SLOT_TTL_SECONDS": "30"})
    assert sum(again) == 10, again
