"""Plan request limits (GCRA) and WebSocket connection slots, in process and in Redis."""

import asyncio
import random
import time

import pytest
import redis
from django.conf import settings as django_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing import limits, store
from billing.gcra import Rate, gcra
from billing.limits import (
    RateLimitState,
    connection_admit,
    connection_refresh,
    connection_release,
    request_admit,
    request_admit_sync,
)
from billing.models import Plan, Tenant
from chatproject.errors import ApiError, ErrorCode
from tests.factories import make_key, make_tenant

FREE = {"requests_per_minute": 10, "burst": 20}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tenant_on(*, requests_per_minute=10, burst=20, ws_max_connections=50) -> Tenant:
    """An unsaved tenant with its plan loaded: the limiter needs no database."""
    plan = Plan(
        name="p",
        requests_per_minute=requests_per_minute,
        burst=burst,
        ws_max_connections=ws_max_connections,
    )
    # A random id, so keys left in Redis by other runs are never this tenant's.
    return Tenant(pk=random.randint(10**9, 2**31), name="t", plan=plan)


@pytest.fixture
def clock(settings) -> FakeClock:
    """In-process limits with a clock the test moves."""
    settings.REDIS_URL = ""
    fake = FakeClock()
    store.reset_memory_store(fake)
    yield fake
    store.reset_memory_store()


@pytest.fixture(params=["memory", "redis"])
def backend(request, settings) -> str:
    """Each test twice: in-process, and in Redis when ``REDIS_URL`` is set."""
    if request.param == "redis":
        if not django_settings.REDIS_URL:
            pytest.skip("needs REDIS_URL")
    else:
        settings.REDIS_URL = ""
        store.reset_memory_store()
    return request.param


async def admit(tenant: Tenant) -> RateLimitState | None:
    return (await request_admit(tenant))[0]


async def slot(tenant: Tenant, connection_id: str) -> bool:
    """Whether the connection got a slot."""
    try:
        await connection_admit(tenant, connection_id)
    except ApiError as refused:
        assert refused.code == ErrorCode.CONNECTION_LIMIT
        return False
    return True


def consume_n(tenant: Tenant, n: int) -> list[RateLimitState]:
    return [request_admit_sync(tenant) for _ in range(n)]


# --- the algorithm ------------------------------------------------------------------


@given(gaps=st.lists(st.integers(min_value=0, max_value=10_000_000), max_size=200))
@hypothesis_settings(max_examples=200, deadline=None)
def test_gcra_never_admits_more_than_burst_plus_refill(gaps):
    rate = Rate(interval_us=6_000_000, burst=20)
    tat, now, admitted = None, 0, 0
    for gap in gaps:
        now += gap
        decision, new_tat = gcra(tat_us=tat, now_us=now, rate=rate)
        assert 0 <= decision.remaining < rate.burst
        if decision.allowed:
            admitted += 1
            tat = new_tat
        else:
            # Coming back after Retry-After is admitted.
            assert gcra(tat_us=tat, now_us=now + decision.retry_after_us, rate=rate)[0].allowed
        assert admitted <= rate.burst + now // rate.interval_us


def test_rate_of_plans():
    assert Rate.of(Plan(requests_per_minute=None, burst=None)) is None
    assert Rate.of(Plan(requests_per_minute=10, burst=20)) == Rate(6_000_000, 20)
    assert Rate.of(Plan(requests_per_minute=500, burst=None)) == Rate(120_000, 500)


# --- in process, with an injected clock -----------------------------------------------


@pytest.mark.asyncio
async def test_burst_is_admitted_then_limited(clock):
    tenant = tenant_on(**FREE)
    states = [await admit(tenant) for _ in range(20)]
    assert [s.remaining for s in states] == list(range(19, -1, -1))
    with pytest.raises(ApiError) as raised:
        await admit(tenant)
    error = raised.value
    assert error.code == ErrorCode.RATE_LIMITED and error.status == 429 and error.retryable
    assert error.headers == {
        "Retry-After": "6",
        "X-RateLimit-Limit": "20",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "120",
    }


@pytest.mark.asyncio
async def test_allowance_refills_over_time(clock):
    tenant = tenant_on(**FREE)
    for _ in range(20):
        await admit(tenant)
    clock.advance(5.9)
    with pytest.raises(ApiError) as raised:
        await admit(tenant)
    assert raised.value.headers["Retry-After"] == "1"
    clock.advance(0.1)
    assert (await admit(tenant)).remaining == 0
    clock.advance(60)  # ten more
    remaining = [(await admit(tenant)).remaining for _ in range(10)]
    assert remaining == list(range(9, -1, -1))
    with pytest.raises(ApiError):
        await admit(tenant)


@pytest.mark.asyncio
async def test_an_idle_tenant_gets_its_whole_burst_back(clock):
    tenant = tenant_on(**FREE)
    for _ in range(20):
        await admit(tenant)
    clock.advance(3600)
    assert (await admit(tenant)).remaining == 19


@pytest.mark.asyncio
async def test_headers_of_an_admitted_request(clock):
    state = await admit(tenant_on(requests_per_minute=100, burst=200))
    assert state.headers() == {
        "X-RateLimit-Limit": "200",
        "X-RateLimit-Remaining": "199",
        "X-RateLimit-Reset": "1",
    }


@pytest.mark.asyncio
async def test_tenants_have_separate_allowances(clock):
    first, second = tenant_on(**FREE), tenant_on(**FREE)
    for _ in range(20):
        await admit(first)
    assert (await admit(second)).remaining == 19


def test_in_process_limit_holds_across_threads(clock):
    from concurrent.futures import ThreadPoolExecutor

    tenant = tenant_on(requests_per_minute=1, burst=25)

    def attempt(_) -> bool:
        try:
            request_admit_sync(tenant)
            return True
        except ApiError:
            return False

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(attempt, range(200))) == 25


# --- both backends --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unlimited_plan_is_not_counted(backend):
    tenant = tenant_on(requests_per_minute=None, burst=None)
    assert [await admit(tenant) for _ in range(50)] == [None] * 50
    assert request_admit_sync(tenant) is None


@pytest.mark.asyncio
async def test_burst_then_429_in_each_backend(backend):
    tenant = tenant_on(requests_per_minute=1, burst=5)
    remaining = [(await admit(tenant)).remaining for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(ApiError) as raised:
        await admit(tenant)
    assert 59 <= int(raised.value.headers["Retry-After"]) <= 60
    assert raised.value.headers["X-RateLimit-Remaining"] == "0"


def test_sync_and_async_share_one_allowance(backend):
    tenant = tenant_on(requests_per_minute=1, burst=4)
    consume_n(tenant, 2)
    assert asyncio.run(admit(tenant)).remaining == 1
    assert request_admit_sync(tenant).remaining == 0


@pytest.mark.asyncio
async def test_many_concurrent_requests_in_one_process_are_all_counted(backend):
    # More at once than the Redis client has connections: they wait, none fails open.
    tenant = tenant_on(requests_per_minute=1, burst=30)

    async def attempt() -> bool:
        try:
            return await admit(tenant) is not None
        except ApiError:
            return False

    assert sum(await asyncio.gather(*(attempt() for _ in range(300)))) == 30


@pytest.mark.asyncio
async def test_redis_keys_expire_when_the_bucket_is_full_again():
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    tenant = tenant_on(requests_per_minute=600, burst=2)  # 0.1 s per request
    await admit(tenant)
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert 0 < client.pttl(limits.rate_key(tenant.pk)) <= 100
    client.close()


@pytest.mark.asyncio
async def test_a_redis_outage_limits_in_this_process_instead(settings, clock):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    tenant = tenant_on(requests_per_minute=10, burst=4, ws_max_connections=1)
    assert (await admit(tenant)).remaining == 3
    assert request_admit_sync(tenant).remaining == 2  # one allowance, sync or not
    await admit(tenant)
    request_admit_sync(tenant)
    with pytest.raises(ApiError) as refused:
        await admit(tenant)
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert refused.value.headers["Retry-After"] == "6"
    assert await slot(tenant, "c1") is True
    assert await slot(tenant, "c2") is False  # the cap holds too
    await connection_release(tenant, "c1")
    assert await slot(tenant, "c2") is True


# --- connection slots -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_slots_up_to_the_plans_cap(backend):
    tenant = tenant_on(ws_max_connections=3)
    granted = [await slot(tenant, f"c{i}") for i in range(5)]
    assert granted == [True, True, True, False, False]
    await connection_release(tenant, "c1")
    assert await slot(tenant, "c9") is True
    assert await slot(tenant, "c10") is False


@pytest.mark.asyncio
async def test_acquiring_a_held_slot_again_takes_no_second_slot(backend):
    tenant = tenant_on(ws_max_connections=2)
    assert await slot(tenant, "c1")
    assert await slot(tenant, "c1")
    assert await connection_refresh(tenant, "c1")
    assert await slot(tenant, "c2")
    assert not await slot(tenant, "c3")


@pytest.mark.asyncio
async def test_releasing_a_slot_not_held_is_harmless(backend):
    tenant = tenant_on(ws_max_connections=1)
    await connection_release(tenant, "never")
    assert await slot(tenant, "c1")


@pytest.mark.asyncio
async def test_lapsed_slots_are_reclaimed_and_refreshed_ones_kept(clock, settings):
    settings.WS_CONNECTION_SLOT_TTL_SECONDS = 30
    tenant = tenant_on(ws_max_connections=2)
    assert await slot(tenant, "crashed")
    assert await slot(tenant, "live")
    clock.advance(20)
    assert await connection_refresh(tenant, "live")
    assert not await slot(tenant, "new")
    clock.advance(15)  # "crashed" lapsed at 30 s; "live" was refreshed at 20 s
    assert await slot(tenant, "new")
    assert not await slot(tenant, "another")


@pytest.mark.asyncio
async def test_lapsed_slots_are_reclaimed_in_redis(settings):
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    settings.WS_CONNECTION_SLOT_TTL_SECONDS = 0.3
    tenant = tenant_on(ws_max_connections=2)
    assert await slot(tenant, "a")
    assert await slot(tenant, "b")
    assert not await slot(tenant, "c")
    await asyncio.sleep(0.2)
    assert await connection_refresh(tenant, "b")
    await asyncio.sleep(0.2)  # "a" lapsed, "b" still held
    assert await slot(tenant, "c")
    assert not await slot(tenant, "d")
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert {m.decode() for m in client.zrange(limits.connection_slots_key(tenant.pk), 0, -1)} == {
        "b",
        "c",
    }
    client.close()


# --- REST endpoints -------------------------------------------------------------------


@pytest.fixture
def tiny_plan_key(db, client_for, backend):
    plan = Plan.objects.create(
        name=f"tiny-{time.monotonic_ns()}", display_name="Tiny", requests_per_minute=1, burst=3
    )
    tenant = make_tenant(plan="enterprise")
    tenant.plan = plan
    tenant.save(update_fields=["plan"])
    if backend == "redis":
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        client.delete(limits.rate_key(tenant.pk))
        client.close()
    return client_for(make_key(tenant))


def test_rest_responses_carry_rate_limit_headers(tiny_plan_key):
    responses = [tiny_plan_key.get("/api/v1/chats/user/u1") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0"]
    assert {r["X-RateLimit-Limit"] for r in responses} == {"3"}
    assert 119 <= int(responses[-1]["X-RateLimit-Reset"]) <= 180


def test_rest_over_the_limit_is_429_in_the_envelope(tiny_plan_key):
    for _ in range(3):
        tiny_plan_key.get("/api/v1/chats/user/u1")
    response = tiny_plan_key.post("/api/v1/chats/", {"user_id": "u1"}, format="json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "RATE_LIMITED"
    assert response.json()["error"]["details"]["retry_after"] == int(response["Retry-After"])
    assert 59 <= int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Limit"] == "3"
    assert response["X-RateLimit-Remaining"] == "0"
    assert int(response["X-RateLimit-Reset"]) >= 179
    assert response["x-request-id"]


def test_errors_after_the_limiter_still_carry_its_headers(tiny_plan_key):
    response = tiny_plan_key.get("/api/v1/chats/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response["X-RateLimit-Remaining"] == "2"


def test_unlimited_plan_has_no_rate_limit_headers(api):
    response = api.get("/api/v1/chats/user/u1")
    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response


def test_unauthenticated_requests_are_401_not_counted(client_for, db):
    response = client_for("sk_live_wrong").get("/api/v1/chats/user/u1")
    assert response.status_code == 401
    assert "X-RateLimit-Limit" not in response
