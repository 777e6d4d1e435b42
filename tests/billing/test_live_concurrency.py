"""Credits and rate limits under real parallel HTTP requests against live servers."""

import os
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from django.db import connection
from django.db.models import Sum

from billing.models import LedgerEntry, Tenant
from chats.models import LLMModel
from tests.factories import make_key, make_tenant
from tests.live import start_server

pytestmark = pytest.mark.django_db(transaction=True)


def in_parallel(count: int, call) -> list[int]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: call(i), range(count)))


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the concurrency claim is PostgreSQL's"
)
def test_fifty_parallel_requests_against_a_balance_for_ten(server):
    # A hold is (1 prompt token + 1000 output tokens) at 1 credit per 1K: 1.001 credits,
    # so the balance covers exactly ten holds. Each answer streams for about three seconds,
    # so no hold is settled (and credits returned) while the others are admitted (the holds
    # queue on the tenant's balance row: on a busy machine that takes a while).
    LLMModel.objects.create(
        name="metered-demo",
        provider="demo",
        upstream_model="demo",
        max_output_tokens=1000,
        input_price_per_1k=Decimal(1),
        output_price_per_1k=Decimal(1),
    )
    tenant = make_tenant(credits=Decimal("10.01"))
    key = make_key(tenant)

    def request(i: int) -> int:
        return httpx.post(
            f"{server.url}/api/ai/chat/complete",
            headers={"X-API-Key": key, "Cache-Control": "no-cache"},
            json={
                "messages": [{"role": "user", "content": f"[demo:tokens=5][demo:delay=600] {i}"}],
                "model": "metered-demo",
            },
            timeout=60,
        ).status_code

    statuses = in_parallel(50, request)
    assert statuses.count(200) <= 10
    assert statuses.count(200) + statuses.count(402) == 50
    balance = Tenant.objects.get(pk=tenant.pk).credit_balance
    assert balance >= 0
    assert LedgerEntry.objects.filter(tenant=tenant).aggregate(s=Sum("amount"))["s"] == balance


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis shared by processes")
def test_two_server_processes_share_one_rate_limit(server, tmp_path):
    """A free-plan tenant (burst 20) sending 40 requests at once, half to each of two
    processes sharing Redis: together they admit what one process would."""
    other = start_server(tmp_path)
    try:
        key = make_key(make_tenant(plan="free"))
        urls = [server.url, other.url]

        def request(i: int) -> int:
            return httpx.get(
                f"{urls[i % 2]}/v1/models", headers={"X-API-Key": key}, timeout=30
            ).status_code

        statuses = in_parallel(40, request)
    finally:
        other.stop()
    assert set(statuses) <= {200, 429}
    assert abs(statuses.count(200) - 20) <= 1
