"""Whole-project checks: health probes, API docs, deploy settings, admin."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from billing.models import ApiKey
from tests.factories import make_chat, make_messages

ROOT = Path(__file__).resolve().parent.parent


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["x-request-id"]


@pytest.mark.django_db
def test_readyz_checks_database(client):
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"


def test_request_id_is_echoed(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["x-request-id"] == "abc-123"


def test_openapi_schema_is_public_and_describes_chats(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "/api/v1/chats/{chat_id}/messages" in response.json()["paths"]


def test_docs_page_works_offline(client):
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    # Assets come from this server (sidecar), never from another host.
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources
    assert all(source.startswith("/") for source in sources), sources


def test_check_deploy_is_clean_in_production_mode():
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECURE_SSL_REDIRECT"}} | {
        "DEBUG": "false",
        "SECRET_KEY": "a-long-random-production-secret-key-with-enough-entropy-0123456789",
        "ALLOWED_HOSTS": "chat.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_without_secret_key_refuses_to_start():
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env | {"DEBUG": "false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.fixture
def staff_client(client, db):
    user = User.objects.create_superuser("admin", "admin@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


def test_admin_creates_key_and_shows_it_once(staff_client, tenant):
    response = staff_client.post(
        "/admin/billing/apikey/add/", {"tenant": tenant.pk, "name": "ci", "expires_at": ""}
    )
    assert response.status_code == 200
    html = response.content.decode()
    api_key = ApiKey.objects.get(name="ci")
    start = html.index('id="new-api-key"')
    raw = html[start:].split(">", 1)[1].split("<", 1)[0]
    assert raw.startswith(api_key.prefix) and len(raw) > 30
    # Afterwards only the prefix is visible.
    change_page = staff_client.get(f"/admin/billing/apikey/{api_key.pk}/change/").content
    assert api_key.prefix.encode() in change_page
    assert raw.encode() not in change_page
    assert (
        raw.encode() not in staff_client.get(f"/admin/billing/tenant/{tenant.pk}/change/").content
    )


@pytest.mark.parametrize(
    "url",
    [
        "/admin/billing/tenant/?q=acme",
        "/admin/billing/plan/",
        "/admin/billing/apikey/",
        "/admin/billing/ledgerentry/",
        "/admin/chats/enduser/?q=user123",
        "/admin/chats/chat/?q=user123",
        "/admin/chats/message/?role__exact=user",
    ],
)
def test_admin_pages_render(staff_client, tenant, url):
    make_messages(make_chat(tenant), 2)
    assert staff_client.get(url).status_code == 200


def test_admin_chat_page_shows_messages_read_only(staff_client, tenant):
    chat = make_chat(tenant)
    make_messages(chat, 2)
    response = staff_client.get(f"/admin/chats/chat/{chat.id}/change/")
    assert response.status_code == 200
    assert b"message 1" in response.content
    assert b'name="_save"' not in response.content


def test_metrics_are_exposed_for_prometheus(client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    for name in (
        "http_responses_total",
        "chat_generations_total",
        "chat_time_to_first_token_seconds",
        "chat_websocket_connections",
    ):
        assert name in text


def test_metrics_token_when_configured(client, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


def _database_options(**env) -> dict:
    """The OPTIONS the settings build for a PostgreSQL URL (no server is contacted)."""
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        "options = settings.DATABASES['default']['OPTIONS']; "
        "print(json.dumps({k: options[k] for k in ('server_side_binding', 'prepare_threshold')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ
        | {"DJANGO_SETTINGS_MODULE": "chatproject.settings", "DEBUG": "true"}
        | {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}
        | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_postgresql_binds_on_the_server_and_prepares_hot_statements():
    assert _database_options() == {"server_side_binding": True, "prepare_threshold": 5}
    assert _database_options(DATABASE_PREPARE_THRESHOLD="0")["prepare_threshold"] is None


@pytest.mark.django_db
def test_a_repeated_statement_is_prepared_on_postgresql():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    for _ in range(6):
        ApiKey.objects.filter(prefix="never").exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ["%billing_apikey%"],
        )
        assert cursor.fetchone()[0] >= 1


@pytest.mark.django_db
def test_the_tables_written_with_every_request_keep_only_the_indexes_queries_use():
    """The audit record, the hold and the ledger entries: no LIKE-pattern index (which
    db_index on a CharField adds on PostgreSQL) and no index a composite one leads with."""
    from django.db import connection

    from billing.models import CreditHold, LedgerEntry
    from governor.models import AuditRecord

    plain = {
        AuditRecord: {
            ("id",),
            ("tenant_id", "created_at"),
            ("created_at",),
            ("request_id",),
            ("sender_id",),
            ("recipient_email_hash",),
            ("reviewed_by_id",),
        },
        LedgerEntry: {("id",), ("tenant_id", "created_at"), ("created_at",), ("reference",)},
        CreditHold: {
            ("id",),
            ("tenant_id",),
            ("reference",),
            ("lease_expires_at",),
            ("closed_at",),
        },
    }
    with connection.cursor() as cursor:
        for model, expected in plain.items():
            table = model._meta.db_table
            found = connection.introspection.get_constraints(cursor, table).items()
            indexes = {tuple(c["columns"]) for _, c in found if c["index"] or c["primary_key"]}
            assert indexes == expected, table
            assert not [name for name, _ in found if name.endswith("_like")], table
