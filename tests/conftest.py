import pytest
from rest_framework.test import APIClient

from tests.factories import make_key, make_tenant


@pytest.fixture
def tenant(db):
    return make_tenant(name="acme", credits=1000)


@pytest.fixture
def api_key(tenant) -> str:
    return make_key(tenant)


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
