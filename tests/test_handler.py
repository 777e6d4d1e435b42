"""The ASGI handler: a request to an async view runs with no thread hand-off at all (its
signals sent on the loop, when anything but Django's own receivers listens); every other
view goes through Django's own path. A request leaves nothing for the garbage collector,
which the application sets for serving."""

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.core import signals

from chatproject.asgi import django_http
from chatproject.garbage_collection import YOUNG_THRESHOLD
from chatproject.handler import has_other_receivers
from tests.factories import make_account


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


async def call(method: str, path: str, body: bytes = b"", key: str = "") -> dict:
    headers = [
        (b"host", b"localhost"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-proto", b"https"),
    ]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    communicator = HttpCommunicator(django_http, method, path, body=body, headers=headers)
    await communicator.send_input({"type": "http.request", "body": body})
    response = await communicator.receive_output(timeout=10)
    response["body"] = b""
    while True:  # a streamed answer's last message may have no body at all
        message = await communicator.receive_output(timeout=10)
        response["body"] += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.send_input({"type": "http.disconnect"})  # as daphne sends, after
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


def test_the_signals_of_an_async_view_are_sent_only_when_something_else_listens():
    # Django's own receivers act on the calling thread's connections and caches: on the
    # event loop there are none, so they alone are no reason to send.
    assert not has_other_receivers(signals.request_started)
    assert not has_other_receivers(signals.request_finished)

    def receiver(**kwargs):
        pass

    signals.request_finished.connect(receiver)
    try:
        assert has_other_receivers(signals.request_finished)
    finally:
        signals.request_finished.disconnect(receiver)


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


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_streamed_answer_leaves_nothing_for_the_garbage_collector(memory_or_redis):
    """A request's objects are freed as it ends, by reference counting: none are held in
    a reference cycle (a server collecting them would spend a tenth of its time on it)."""
    account = await sync_to_async(make_account)(name="cycles", credits=1000)

    async def stream() -> None:
        messages = [{"role": "user", "content": "hi"}]
        body = json.dumps({"model": "demo/cheap", "stream": True, "messages": messages})
        response = await call("POST", "/v1/chat/completions", body.encode(), account.key)
        assert response["status"] == 200 and b"[DONE]" in response["body"]

    await stream()  # imports, caches, connections: made once
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            await stream()
        gc.collect()
        left = {f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    ours = ("chats.", "chatproject.", "billing.", "governor.", "django.")
    assert sorted(name for name in left if name.startswith(ours)) == []


def test_the_application_sets_the_collector_for_serving():
    """Loading the ASGI application (as daphne and uvicorn do) freezes what start-up made
    and spaces the young-generation passes out (chatproject.garbage_collection)."""
    code = "import gc, chatproject.asgi; print(gc.get_threshold()[0], gc.get_freeze_count())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout.split()
    assert int(out[0]) == YOUNG_THRESHOLD
    assert int(out[1]) > 50_000  # Django, the models, the libraries


def test_a_path_is_resolved_once_and_each_path_to_its_own_match(rf):
    from chatproject import handler

    resolving = handler.ASGIHandler()
    first, second = (rf.get(f"/v1/chat/streams/{stream}") for stream in ("one", "two"))
    matches = [resolving.resolve_request(request) for request in (first, second, first)]
    assert [match.kwargs["stream"] for match in matches] == ["one", "two", "one"]
    assert first.resolver_match is matches[0] and matches[2] is matches[0]  # the copy
    with pytest.raises(handler.Resolver404):
        resolving.resolve_request(rf.get("/no/such/path"))
