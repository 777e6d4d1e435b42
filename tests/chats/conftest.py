import pytest
import pytest_asyncio
from django.db import connection

from chatproject import async_db
from chats import catalog
from tests.factories import ensure_defaults


@pytest.fixture
def fresh_catalog(settings):
    """Every lookup reads the model catalog from the database (no per-process cache)."""
    settings.MODEL_CATALOG_TTL_SECONDS = 0
    catalog.clear_catalog_cache()
    yield
    catalog.clear_catalog_cache()


@pytest.fixture
def seeded_catalog(transactional_db, fresh_catalog):
    """The seeded models, committed (the engine's catalog lookup reads in a database
    thread of its own), read afresh by every lookup."""
    ensure_defaults()


@pytest_asyncio.fixture(params=["orm", "event loop"])
async def engine_writes(request, settings):
    """The engine's admission and finalisation writes made through the ORM, and (on
    PostgreSQL) from the event loop on the async pool, as the server makes them."""
    if request.param == "event loop":
        if connection.vendor != "postgresql":
            pytest.skip("the async pool is PostgreSQL's")
        settings.ASYNC_DATABASE_POOL = True
    yield request.param
    await async_db.close()
