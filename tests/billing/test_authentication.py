from datetime import timedelta

import pytest
from django.utils import timezone

from billing.keys import hash_key
from billing.models import ApiKey
from billing.services import api_key_create, api_key_revoke
from tests.factories import make_key, make_tenant

pytestmark = pytest.mark.django_db

URL = "/api/v1/chats/user/someone"


def assert_unauthorized(response):
    assert response.status_code == 401
    body = response.json()
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert "message" in body["error"]


def test_missing_key_is_401_with_envelope(client_for):
    assert_unauthorized(client_for(None).get(URL))


def test_unknown_key_is_401(client_for, api_key):
    assert_unauthorized(client_for(api_key + "x").get(URL))


def test_revoked_key_is_401(client_for, tenant):
    api_key, raw = api_key_create(tenant=tenant)
    assert client_for(raw).get(URL).status_code == 200
    api_key_revoke(api_key=api_key)
    assert_unauthorized(client_for(raw).get(URL))


def test_expired_key_is_401(client_for, tenant):
    raw = make_key(tenant, expires_at=timezone.now() - timedelta(seconds=1))
    assert_unauthorized(client_for(raw).get(URL))


def test_key_of_inactive_tenant_is_401(client_for, tenant, api_key):
    tenant.is_active = False
    tenant.save(update_fields=["is_active"])
    assert_unauthorized(client_for(api_key).get(URL))


def test_bearer_authorization_is_accepted(client, api_key):
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert response.status_code == 200


def test_error_never_echoes_the_key(client_for, api_key):
    response = client_for(api_key + "x").get(URL)
    assert api_key not in response.content.decode()


def test_key_is_stored_only_as_hash_and_prefix(tenant):
    api_key, raw = api_key_create(tenant=tenant)
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert raw.startswith("sk_live_")
    assert len(raw) >= len("sk_live_") + 32  # 192 random bits, url-safe base64
    assert stored.hashed_key == hash_key(raw)
    assert raw.startswith(stored.prefix) and len(stored.prefix) < 16
    assert raw not in {getattr(stored, f.attname) for f in ApiKey._meta.concrete_fields}


def test_keys_are_unique():
    tenant = make_tenant()
    raws = {api_key_create(tenant=tenant)[1] for _ in range(50)}
    assert len(raws) == 50


def test_last_used_is_recorded(client_for, tenant):
    api_key, raw = api_key_create(tenant=tenant)
    client_for(raw).get(URL)
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
