"""API paths answer in their own JSON format in every mode (chatproject.api_paths), and
the REST endpoints refuse oversized bodies with 413, in DEBUG too. (The streaming
transports authenticate in worker threads, outside the test's transaction: they are
covered over the wire by tests/test_hostile_input.py.)"""

import pytest
from django.test import override_settings

BIG = b'{"user_id": "' + b"a" * 5_000_000 + b'"}'


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def mode(request, settings):
    with override_settings(DEBUG=request.param):
        yield request.param


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/chats/",
        "/api/v1/projects",
        "/api/v1/projects/p1/documents",
        "/api/governor/validate",
    ],
)
def test_an_oversized_body_is_413_json(mode, api, tenant, path, caplog):
    from knowledge.services import project_create

    project_create(tenant=tenant, external_id="p1", name="")
    response = api.generic("POST", path, BIG, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    assert "4194304" in str(response.json()["error"]["message"])
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/api/nope", "envelope"), ("/api/v1/chat/nope", "envelope"), ("/v1/nope", "openai")],
)
def test_unknown_api_paths_answer_json_404(mode, client, path, shape):
    response = client.get(path)
    assert response.status_code == 404
    error = response.json()["error"]
    if shape == "openai":
        assert error["type"] == "invalid_request_error" and error["code"] == "not_found"
    else:
        assert error["code"] == "NOT_FOUND"


def test_other_paths_keep_djangos_pages(client):
    with override_settings(DEBUG=True):
        assert "text/html" in client.get("/nope")["Content-Type"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/chats/user/a%00b", 400),
        ("/api/v1/chats/user/ab?offset=%00", 400),
        ("/api/v1/projects/x%00y", 400),
        ("/api/v1/chat/stream?x=%00", 422),
        ("/v1/models/demo%00", 400),
    ],
)
def test_a_nul_in_the_url_is_refused_in_the_paths_format(mode, api, path, status):
    response = api.get(path)
    assert response.status_code == status
    error = response.json()["error"]
    assert "NUL" in error["message"]


@pytest.mark.parametrize("offset", [2**63, 2**63 - 1, 2**64, 10**30])
def test_huge_offsets_are_refused(api, offset):
    response = api.get(f"/api/v1/chats/user/someone?offset={offset}")
    assert response.status_code == 400
    assert "offset" in response.json()["error"]["details"]
