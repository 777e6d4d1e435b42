"""The ASGI handler: a request to an async view runs with no thread hand-off at all (its
signals sent on the loop); every other view goes through Django's own path."""

import json

import pytest
from channels.testing import HttpCommunicator
from django.core import signals

from chatproject.asgi import django_http


@pytest.fixture
def signalled():
    sent = []

    def started(**kwargs):
        sent.append("started")

    def finished(**kwargs):
        sent.append("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield sent
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


async def call(method: str, path: str, body: bytes = b"") -> dict:
    headers = [
        (b"host", b"localhost"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-proto", b"https"),
    ]
    communicator = HttpCommunicator(django_http, method, path, body=body, headers=headers)
    response = await communicator.get_response(timeout=10)
    await communicator.wait(timeout=10)  # the request's end: its response closed
    return response


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_async_view_runs_with_no_thread_hand_off(hand_offs, signalled):
    body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    response = await call("POST", "/v1/chat/completions", body.encode())
    assert response["status"] == 401  # no key: answered by the async view, in its format
    assert json.loads(response["body"])["error"]["code"] == "invalid_api_key"
    assert hand_offs == []
    assert signalled == ["started", "finished"]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_other_views_keep_djangos_path(hand_offs, signalled):
    response = await call("GET", "/api/v1/projects")  # DRF: a sync view
    assert response["status"] == 401
    assert hand_offs  # the view, its signals, in a thread
    assert signalled == ["started", "finished"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "status"), [("/no/such/path", 404), ("/v1/chat/completions/\x00", 400)]
)
async def test_unknown_paths_are_answered_by_django(path, status):
    response = await call("GET", path)
    assert response["status"] == status
