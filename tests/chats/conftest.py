import pytest

from chats import catalog


@pytest.fixture
def fresh_catalog(settings):
    """Every lookup reads the model catalog from the database (no per-process cache)."""
    settings.MODEL_CATALOG_TTL_SECONDS = 0
    catalog.clear_catalog_cache()
    yield
    catalog.clear_catalog_cache()
