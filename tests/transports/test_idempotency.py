"""Idempotency-Key: a retried request replays the stored answer and is charged once."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from billing.models import LedgerEntry
from chats.models import Message
from tests.polling import poll
from tests.transports.conftest import post_events, unique

pytestmark = pytest.mark.django_db(transaction=True)


def complete(server, account, content: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/ai/chat/complete",
        headers={**account.headers, "Idempotency-Key": key, "Cache-Control": "no-cache"},
        json={"messages": [{"role": "user", "content": content}]},
        timeout=30,
    )


def test_a_retry_with_the_same_key_is_replayed_and_charged_once(server, account):
    key = uuid.uuid4().hex
    content = unique()
    first = complete(server, account, content, key)
    balance_after_first = account.balance()
    second = complete(server, account, content, key)
    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json()["content"] == first.json()["content"]
    assert account.balance() == balance_after_first


def test_a_replay_is_the_original_answer_unchanged(server, account):
    key = uuid.uuid4().hex
    content = unique()
    first = complete(server, account, content, key)
    replayed = complete(server, account, content, key)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json() == first.json()  # same id, usage, credits and cache status
    assert first.json()["cache_status"] == "MISS"
    for header in ("x-credits-charged", "x-credits-remaining", "x-cache-status"):
        assert replayed.headers[header] == first.headers[header], header


def test_a_streamed_replay_reports_the_original_figures(server, account):
    key = uuid.uuid4().hex
    headers = {**account.headers, "Idempotency-Key": key, "Cache-Control": "no-cache"}
    body = {"messages": [{"role": "user", "content": unique()}]}
    usages = []
    for _ in range(2):
        _, stream = post_events(f"{server.url}/api/ai/chat", body, headers)
        usages.append(next(event.json() for event in stream if event.event == "usage"))
    assert usages[1] == usages[0] and usages[0]["credits_charged"] > 0


def test_another_key_is_a_new_request(server, account):
    content = unique()
    complete(server, account, content, uuid.uuid4().hex)
    before = account.balance()
    again = complete(server, account, content, uuid.uuid4().hex)
    assert "Idempotent-Replayed" not in again.headers
    assert account.balance() < before


def test_a_failed_answer_is_not_kept_for_retries(server, account):
    key = uuid.uuid4().hex
    failing = complete(server, account, unique("[demo:fail-after=2] a b c d"), key)
    assert failing.status_code == 502
    retried = complete(server, account, unique("a fresh answer"), key)
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers


def test_keys_are_per_tenant(server, account):
    from tests.factories import account_for, make_tenant

    other_tenant = make_tenant(credits=100)
    other = account_for(other_tenant)
    key = uuid.uuid4().hex
    complete(server, account, unique(), key)
    theirs = complete(server, other, unique(), key)
    assert "Idempotent-Replayed" not in theirs.headers


def test_replays_store_the_exchange_once(server, account):
    key = uuid.uuid4().hex
    body = {"prompt": unique("store me once"), "roomId": str(uuid.uuid4())}
    headers = {**account.headers, "Idempotency-Key": key, "Cache-Control": "no-cache"}
    chat_ids = set()
    for _ in range(2):
        with httpx.stream(
            "POST", f"{server.url}/api/chat", headers=headers, json=body, timeout=30
        ) as response:
            response.read()
            chat_ids.add(response.headers.get("x-chat-id"))
    chat_ids.discard(None)
    assert len(chat_ids) == 1
    assert Message.objects.filter(chat_id=chat_ids.pop()).count() == 2  # user + assistant


def test_a_concurrent_duplicate_is_refused_not_charged_twice(server, account):
    """The second of two simultaneous requests with one key gets 409, not a second run."""
    key = uuid.uuid4().hex
    content = unique("[demo:tokens=20][demo:delay=50] slow")
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(complete, server, account, content, key)
        # The key is claimed before the credits are held: once the hold is there, it is.
        poll(
            lambda: LedgerEntry.objects.filter(
                tenant=account.tenant, kind=LedgerEntry.Kind.HOLD
            ).exists()
        )
        second = pool.submit(complete, server, account, content, key)
        statuses = sorted([first.result().status_code, second.result().status_code])
    assert statuses == [200, 409]


def test_the_same_key_with_another_request_is_refused(server, account):
    key = uuid.uuid4().hex
    complete(server, account, unique("one question"), key)
    other = complete(server, account, unique("another question"), key)
    assert other.status_code == 400
    assert "Idempotency-Key" in other.json()["error"]["details"]


def test_the_same_key_offering_other_tools_is_another_request(server, account):
    key, content = uuid.uuid4().hex, unique()

    def ask(tool: str) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/chat/completions",
            headers={**account.headers, "Idempotency-Key": key},
            json={
                "model": "demo/balanced",
                "messages": [{"role": "user", "content": content}],
                "tools": [{"type": "function", "function": {"name": tool, "parameters": {}}}],
            },
            timeout=30,
        )

    assert ask("lookup_order").status_code == 200
    other = ask("cancel_order")
    assert other.status_code == 400
    assert "Idempotency-Key" in other.text
