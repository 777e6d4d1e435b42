"""The middleware: every answer carries the security headers; API paths run without the
browser middleware (sessions, CSRF, users, messages) and without a thread hand-off; the
admin keeps its session and CSRF protection."""

import re
import uuid

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from tests.factories import make_key, make_tenant

HTTPS = {"X-Forwarded-Proto": "https"}  # as the TLS proxy in front sets it


@pytest.fixture(scope="module")
def production(django_db_setup, django_db_blocker, tmp_path_factory):
    """A server as deployed: DEBUG off, HTTPS redirect and HSTS on."""
    from tests.live import start_server

    with django_db_blocker.unblock():
        server = start_server(
            tmp_path_factory.mktemp("production"),
            DEBUG="false",
            SECRET_KEY="middleware-tests-" + uuid.uuid4().hex,
            SECURE_SSL_REDIRECT="true",
            DATABASE_POOL_MIN="1",
            DATABASE_POOL_MAX="3",
        )
    yield server
    server.stop()


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/api/ai/chat"),
        ("GET", "/api/v1/projects"),
        ("GET", "/v1/nope"),
    ],
)
def test_api_answers_carry_the_security_headers_and_no_cookie(production, method, path):
    tenant = make_tenant()
    key = make_key(tenant)
    for headers in ({}, {"Authorization": f"Bearer {key}"}):
        response = httpx.request(
            method, production.url + path, headers=HTTPS | headers, json={}, timeout=30
        )
        assert response.status_code < 500, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        assert_security_headers(response)
        assert "set-cookie" not in response.headers
        assert "cookie" not in response.headers.get("Vary", "").lower()


def test_plain_http_to_the_api_is_still_redirected(production):
    response = httpx.get(production.url + "/v1/models", timeout=30)
    assert response.status_code == 301
    assert response.headers["Location"].startswith("https://")


@pytest.mark.django_db(transaction=True)
def test_the_admin_keeps_csrf_and_sessions(production):
    User.objects.create_superuser("root", "root@example.com", "a-long-admin-password-1")
    # The proxy speaks HTTPS to the browser: CSRF checks the Referer then. The cookies are
    # Secure, so this plain-HTTP client sends them by hand.
    host = production.url.removeprefix("http://")
    headers = HTTPS | {"Referer": f"https://{host}/admin/login/"}
    with httpx.Client(base_url=production.url, headers=headers, timeout=30) as browser:
        page = browser.get("/admin/login/")
        assert page.status_code == 200
        assert_security_headers(page)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        cookie = {"Cookie": f"csrftoken={page.cookies['csrftoken']}"}
        form = {"username": "root", "password": "a-long-admin-password-1", "next": "/admin/"}

        assert browser.post("/admin/login/", data=form).status_code == 403  # no cookie
        forged = browser.post("/admin/login/", data=form | {"csrfmiddlewaretoken": "x" * 64})
        assert forged.status_code == 403
        signed_in = browser.post(
            "/admin/login/", data=form | {"csrfmiddlewaretoken": token}, headers=cookie
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
        session = signed_in.cookies["sessionid"]
        assert browser.get("/admin/", headers={"Cookie": f"sessionid={session}"}).status_code == 200
        assert browser.get("/admin/").status_code == 302  # no session: to the login page


def middleware_hooks(wrapped) -> list:
    """The middleware hooks among ``wrapped`` (bound methods named process_*)."""
    return [
        func
        for func in wrapped
        if getattr(func, "__name__", "").startswith("process_") and hasattr(func, "__self__")
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/api/v1/projects", "/v1/nope"])
async def test_api_requests_make_no_thread_hand_off_in_middleware(hand_offs, path):
    # An ASGI (async) request through the whole middleware chain, as daphne runs it.
    response = await AsyncClient().get(path, HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code in (200, 401, 404)
    assert response["X-Frame-Options"] == "DENY"
    assert middleware_hooks(hand_offs) == []


@pytest.mark.asyncio
async def test_browser_pages_still_run_the_browser_middleware(hand_offs):
    response = await AsyncClient().get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    names = {type(func.__self__).__name__ for func in middleware_hooks(hand_offs)}
    assert {"SessionMiddleware", "CsrfViewMiddleware", "MessageMiddleware"} <= names
