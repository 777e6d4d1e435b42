"""API keys from the in-process cache (billing.key_cache): one read per key and second,
and a key revoked, expired or whose tenant is deactivated stops working within that
second, in this process and in other server processes."""

import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import key_cache
from billing.models import ApiKey, Tenant
from billing.services import api_key_authenticate, api_key_create, api_key_revoke
from chatproject.errors import ApiError
from tests.factories import make_key, make_tenant


@pytest.fixture(autouse=True)
def _empty_cache():
    key_cache.key_cache_clear()
    yield
    key_cache.key_cache_clear()


def reads(raw: str) -> int:
    """Database queries made resolving ``raw``."""
    with CaptureQueriesContext(connection) as queries:
        key_cache.api_key_resolve(raw)
    return len(queries)


@pytest.mark.django_db
def test_a_key_is_read_once_within_the_cache_time(tenant, api_key):
    assert reads(api_key) >= 1
    assert [reads(api_key) for _ in range(5)] == [0] * 5


@pytest.mark.django_db
def test_a_key_is_read_again_once_its_second_is_up(tenant, api_key, settings):
    settings.API_KEY_CACHE_SECONDS = 0.2
    reads(api_key)
    assert reads(api_key) == 0
    time.sleep(0.25)
    assert reads(api_key) >= 1


@pytest.mark.django_db
def test_no_cache_with_zero_seconds(tenant, api_key, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    assert reads(api_key) >= 1
    assert reads(api_key) >= 1


@pytest.mark.django_db
def test_unknown_keys_are_not_cached(api_key):
    for _ in range(2):
        with pytest.raises(ApiError):
            key_cache.api_key_resolve(api_key + "x")
    assert key_cache._cache == {}


@pytest.mark.django_db
def test_a_key_revoked_in_this_process_is_refused_at_once(tenant):
    api_key, raw = api_key_create(tenant=tenant)
    key_cache.api_key_resolve(raw)
    api_key_revoke(api_key=api_key)
    with pytest.raises(ApiError):
        key_cache.api_key_resolve(raw)


@pytest.mark.django_db
def test_a_tenant_deactivated_in_this_process_is_refused_at_once(tenant, api_key):
    key_cache.api_key_resolve(api_key)
    tenant.is_active = False
    tenant.save(update_fields=["is_active"])
    with pytest.raises(ApiError):
        key_cache.api_key_resolve(api_key)


@pytest.mark.django_db
def test_a_change_made_without_signals_is_seen_within_the_second(tenant, settings):
    settings.API_KEY_CACHE_SECONDS = 0.3
    api_key, raw = api_key_create(tenant=tenant)
    key_cache.api_key_resolve(raw)
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())  # no signal
    key_cache.api_key_resolve(raw)  # still the copy read before
    time.sleep(0.35)
    with pytest.raises(ApiError):
        key_cache.api_key_resolve(raw)


@pytest.mark.django_db
def test_a_cached_key_is_refused_the_moment_it_expires(tenant):
    raw = make_key(tenant, expires_at=timezone.now() + timedelta(seconds=0.3))
    key_cache.api_key_resolve(raw)
    time.sleep(0.35)
    with CaptureQueriesContext(connection) as queries, pytest.raises(ApiError):
        key_cache.api_key_resolve(raw)
    assert len(queries) == 0  # refused from the copy, by the clock


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_async_resolver_shares_the_cache(settings):
    tenant = await sync_to_async(make_tenant)()
    raw = await sync_to_async(make_key)(tenant)
    first = await key_cache.api_key_resolve_async(raw)
    again = await key_cache.api_key_resolve_async(raw)
    assert again is first
    assert key_cache.api_key_resolve(raw) is first


def counting_reads(monkeypatch) -> list[str]:
    """The keys the async resolver reads from the database, as it reads them."""
    read: list[str] = []

    def authenticate(raw_key):
        read.append(raw_key)
        return api_key_authenticate(raw_key)

    monkeypatch.setattr(key_cache, "api_key_authenticate", authenticate)
    return read


async def reads_finished() -> None:
    while key_cache._reads:
        await asyncio.sleep(0.01)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_uses_arriving_together_wait_on_one_read(monkeypatch):
    tenant = await sync_to_async(make_tenant)()
    raw = await sync_to_async(make_key)(tenant)
    read = counting_reads(monkeypatch)
    found = await asyncio.gather(*(key_cache.api_key_resolve_async(raw) for _ in range(20)))
    assert read == [raw]
    assert all(api_key is found[0] for api_key in found)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_busy_key_is_read_again_before_its_copy_runs_out(monkeypatch, settings):
    settings.API_KEY_CACHE_SECONDS = 0.4
    tenant = await sync_to_async(make_tenant)()
    raw = await sync_to_async(make_key)(tenant)
    read = counting_reads(monkeypatch)
    first = await key_cache.api_key_resolve_async(raw)
    assert await key_cache.api_key_resolve_async(raw) is first and len(read) == 1
    await asyncio.sleep(0.25)  # past half its time: this use starts the next read
    assert await key_cache.api_key_resolve_async(raw) is first
    await reads_finished()
    assert len(read) == 2
    await asyncio.sleep(0.2)  # the first copy's time is up; the second's is not
    again = await key_cache.api_key_resolve_async(raw)
    assert again is not first and len(read) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_read_ahead_that_finds_the_key_revoked_drops_the_copy(settings):
    settings.API_KEY_CACHE_SECONDS = 0.4
    tenant = await sync_to_async(make_tenant)()
    api_key, raw = await sync_to_async(api_key_create)(tenant=tenant)
    await key_cache.api_key_resolve_async(raw)
    revoke = ApiKey.objects.filter(pk=api_key.pk).update  # no signal, as another process
    await sync_to_async(revoke)(revoked_at=timezone.now())
    await asyncio.sleep(0.25)
    await key_cache.api_key_resolve_async(raw)  # still the copy; its read finds the change
    await reads_finished()
    assert key_cache._cache == {}
    with pytest.raises(ApiError):
        await key_cache.api_key_resolve_async(raw)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_read_overtaken_by_a_revocation_stores_nothing(monkeypatch):
    tenant = await sync_to_async(make_tenant)()
    api_key, raw = await sync_to_async(api_key_create)(tenant=tenant)

    def authenticate_then_revoke(raw_key):
        found = api_key_authenticate(raw_key)
        api_key_revoke(api_key=api_key)  # saved in this process while the read was out
        return found

    monkeypatch.setattr(key_cache, "api_key_authenticate", authenticate_then_revoke)
    await key_cache.api_key_resolve_async(raw)  # the read answers what it found
    assert key_cache._cache == {}
    monkeypatch.undo()
    with pytest.raises(ApiError):
        await key_cache.api_key_resolve_async(raw)


# --- over HTTP, two server processes ------------------------------------------------------


@pytest.fixture(scope="module")
def two_servers(django_db_setup, django_db_blocker, tmp_path_factory):
    """Two server processes on the test database (and the test's Redis, when set)."""
    from tests.live import start_server

    servers = []
    with django_db_blocker.unblock():
        for name in ("one", "two"):
            servers.append(
                start_server(
                    tmp_path_factory.mktemp(name),
                    MODEL_CATALOG_TTL_SECONDS="10",
                    DATABASE_POOL_MIN="1",
                    DATABASE_POOL_MAX="3",
                )
            )
    yield servers
    for server in servers:
        server.stop()


async def statuses(servers, key: str) -> list[int]:
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.get(s.url + "/v1/models", headers={"X-API-Key": key}) for s in servers)
        )
    return [answer.status_code for answer in answers]


async def refused_after(servers, key: str) -> float:
    """Seconds until every server answers 401, polling."""
    start = time.monotonic()
    while time.monotonic() - start < 10:
        if await statuses(servers, key) == [401] * len(servers):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError("the key still works after 10 s")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["revoke", "update", "deactivate", "expire"])
def test_a_changed_key_is_refused_by_every_process_within_a_second(two_servers, change):
    tenant = make_tenant()
    api_key, raw = api_key_create(tenant=tenant)
    # Both processes hold a copy: a stream of requests keeps it fresh.
    for _ in range(3):
        assert asyncio.run(statuses(two_servers, raw)) == [200, 200]
    if change == "revoke":  # as the admin does (in another process than the servers)
        api_key_revoke(api_key=api_key)
    elif change == "update":
        ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    elif change == "deactivate":
        Tenant.objects.filter(pk=tenant.pk).update(is_active=False)
    else:
        ApiKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now())
    assert asyncio.run(refused_after(two_servers, raw)) < 1.5
