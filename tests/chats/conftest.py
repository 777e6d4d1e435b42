import pytest

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
