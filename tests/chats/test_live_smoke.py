import httpx
import pytest

from tests.factories import make_key, make_tenant
from tests.live import ON_EACH_SERVER


@pytest.mark.django_db(transaction=True)
def test_live_server_sees_test_data(server):
    key = make_key(make_tenant())
    response = httpx.post(
        f"{server.url}/api/v1/chats/", json={"user_id": "u1"}, headers={"X-API-Key": key}
    )
    assert response.status_code == 201, response.text


@ON_EACH_SERVER
@pytest.mark.django_db(transaction=True)
def test_health_probes_over_the_wire(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok", ready.text
