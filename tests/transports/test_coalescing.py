"""In-flight coalescing: an identical request that arrives while the first one is still
generating joins it (through the stream log, across processes) and is a free cache hit."""

import json
import os
import shutil
import subprocess
import threading

import httpx
import pytest

from billing.models import LedgerEntry
from tests.transports.conftest import events, unique

pytestmark = pytest.mark.django_db(transaction=True)

# RegPilot's documented caching example, run as printed (its host and key aside) under Node: the
# second request goes out as soon as the first one's headers are in.
CACHING_EXAMPLE = """
// First request - Cache MISS
const response1 = await fetch('%(url)s/api/ai/chat', {
  method: 'POST',
  headers: {
    'X-API-Key': process.env.REGPILOT_API_KEY,
    'Content-Type': 'application/json'
  },
  body: JSON.stringify({
    messages: [{ role: 'user', content: %(question)s }],
    quality: 'cheap'
  })
});
console.log('Cache:', response1.headers.get('x-cache-status')); // MISS

// Second identical request - Cache HIT
const response2 = await fetch('%(url)s/api/ai/chat', {
  method: 'POST',
  headers: {
    'X-API-Key': process.env.REGPILOT_API_KEY,
    'Content-Type': 'application/json'
  },
  body: JSON.stringify({
    messages: [{ role: 'user', content: %(question)s }],
    quality: 'cheap'
  })
});
console.log('Cache:', response2.headers.get('x-cache-status')); // HIT
console.log('Credits:', response2.headers.get('x-credits-charged')); // 0 (free!)
"""


def body(question: str) -> dict:
    return {"messages": [{"role": "user", "content": question}], "quality": "cheap"}


def _text(stream_events) -> str:
    return "".join(
        json.loads(event.data).get("content", "")
        for event in stream_events
        if event.event == "message" and event.data.startswith("{")
    )


def _charges(tenant_id: int) -> int:
    """How many requests were charged: each charge settles a credit hold."""
    kinds = LedgerEntry.objects.filter(tenant_id=tenant_id).values_list("kind", flat=True)
    holds = [kind for kind in kinds if kind == LedgerEntry.Kind.HOLD]
    assert list(kinds).count(LedgerEntry.Kind.SETTLE) == len(holds)
    return len(holds)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_documented_caching_example_prints_miss_hit_and_no_credits(slow, account, tmp_path):
    question = json.dumps(f"What is 2+2? {unique()}")
    script = tmp_path / "caching.mjs"
    script.write_text(CACHING_EXAMPLE % {"url": slow[0].url, "question": question})
    result = subprocess.run(
        ["node", str(script)],
        env={**os.environ, "REGPILOT_API_KEY": account.key},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == ["Cache: MISS", "Cache: HIT", "Credits: 0"]


def _stream_with_joiner(first_url: str, second_url: str, account, question: str):
    """The first request streamed; the identical second one sent once the first's
    headers are in (as that example does), both read to the end."""
    results: dict[str, tuple[httpx.Response, list]] = {}
    headers_in = threading.Event()

    def first():
        with httpx.stream(
            "POST",
            f"{first_url}/api/ai/chat",
            json=body(question),
            headers=account.headers,
            timeout=60,
        ) as response:
            headers_in.set()
            results["first"] = (response, events(response))

    thread = threading.Thread(target=first)
    thread.start()
    assert headers_in.wait(30)
    with httpx.stream(
        "POST",
        f"{second_url}/api/ai/chat",
        json=body(question),
        headers=account.headers,
        timeout=60,
    ) as response:
        results["second"] = (response, events(response))
    thread.join(60)
    return results["first"], results["second"]


def test_a_joined_request_streams_the_same_text_live_and_is_charged_nothing(slow, account):
    (first, first_events), (second, second_events) = _stream_with_joiner(
        slow[0].url, slow[0].url, account, f"Tell me about coalescing {unique()}"
    )
    assert first.headers["x-cache-status"] == "MISS"
    assert second.headers["x-cache-status"] == "HIT"
    assert second.headers["x-credits-charged"] == "0"
    assert _text(second_events) == _text(first_events) != ""
    usage = next(json.loads(e.data) for e in second_events if e.event == "usage")
    assert usage["cache_status"] == "HIT" and usage["credits_charged"] == 0
    assert _charges(account.tenant.pk) == 1


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="processes share Redis only")
def test_an_identical_request_on_another_process_joins_and_is_charged_once(slow, account):
    (first, first_events), (second, second_events) = _stream_with_joiner(
        slow[0].url, slow[1].url, account, f"Tell me about processes {unique()}"
    )
    assert (first.headers["x-cache-status"], second.headers["x-cache-status"]) == ("MISS", "HIT")
    assert _text(second_events) == _text(first_events) != ""
    assert _charges(account.tenant.pk) == 1
