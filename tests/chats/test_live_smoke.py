import httpx
import pytest

from tests.factories import make_key, make_tenant


@pytest.mark.django_db(transaction=True)
def test_live_server_sees_test_data(server):
    key = make_key(make_tenant())
    response = httpx.post(
        f"{server.url}/api/v1/chats/", json={"user_id": "u1"}, headers={"X-API-Key": key}
    )
    assert response.status_code == 201, response.text
