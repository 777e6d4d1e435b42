import pytest
from rest_framework.test import APIClient

from tests.factories import Account, make_account


@pytest.fixture
def account(db) -> Account:
    """The tenant a test calls the API as: 1000 credits, the default plan, a key."""
    return make_account(name="acme", credits=1000)


@pytest.fixture
def tenant(account):
    return account.tenant


@pytest.fixture
def api_key(account) -> str:
    return account.key


@pytest.fixture
def client_for():
    """An API client that sends the given key in ``X-API-Key``."""

    def build(key: str | None) -> APIClient:
        client = APIClient()
        if key:
            client.credentials(HTTP_X_API_KEY=key)
        return client

    return build


@pytest.fixture
def api(client_for, api_key) -> APIClient:
    return client_for(api_key)


@pytest.fixture(scope="session")
def live_server_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """One daphne process for the session, serving the test database."""
    from tests.live import start_server

    with django_db_blocker.unblock():
        server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def uvicorn_server_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """One uvicorn process for the session (chatproject.uvicorn_server), on the test database."""
    from tests.live import start_server

    with django_db_blocker.unblock():
        server = start_server(tmp_path_factory.mktemp("uvicorn"), "uvicorn")
    yield server
    server.stop()


@pytest.fixture
def server(request, live_server_process, transactional_db):
    """The live server, for a test whose data it must see (committed, so transactional):
    daphne, or uvicorn in a test marked ``tests.live.ON_EACH_SERVER``."""
    from tests.factories import ensure_defaults

    ensure_defaults()
    if getattr(request, "param", "daphne") == "uvicorn":
        return request.getfixturevalue("uvicorn_server_process")
    return live_server_process


@pytest.fixture(scope="session", autouse=True)
def _end_database_sessions(django_db_setup, django_db_blocker):
    """Before the PostgreSQL test database is dropped, end the sessions still on it: pool
    connections checked out by the worker threads of async tests and servers."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    connection.close_pool()


@pytest.fixture(scope="session", autouse=True)
def _forget_earlier_runs_in_redis():
    """Test databases number tenants from 1 again, so the limits, slots and cached answers
    an earlier run left in Redis under those ids would leak into this one: clear the
    product's keys (``billing:*``, and models' cool-downs ``models:*``) in the configured
    Redis database first."""
    import redis
    from django.conf import settings

    if not settings.REDIS_URL:
        return
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        for pattern in ("billing:*", "models:*"):
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def memory_or_redis(request, settings) -> str:
    """Each test twice: in-process, and in Redis when ``REDIS_URL`` is set."""
    if request.param == "redis":
        if not settings.REDIS_URL:
            pytest.skip("needs REDIS_URL")
    else:
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def hand_offs(monkeypatch) -> list:
    """What goes to a thread through a thread-sensitive ``sync_to_async`` meanwhile (the
    callables wrapped); the database executor's calls are not: they are the database work
    itself, on threads of their own."""
    from asgiref import sync

    wrapped: list = []
    original = sync.SyncToAsync.__init__

    def record(self, func, *args, **kwargs):
        if kwargs.get("thread_sensitive", True):
            wrapped.append(func)
        original(self, func, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__init__", record)
    return wrapped
