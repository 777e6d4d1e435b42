"""Fallback before the first token, over the wire: a failing first model is followed by its
fallback, which names itself and is what is charged; a failure after tokens is never
retried; cool-downs are shared by server processes through Redis; a tier's requests are
spread by weight. Real HTTP against fake upstreams (tests/fakes/upstream.py)."""

import uuid
from decimal import Decimal

import httpx
import pytest
from django.conf import settings

from billing import pricing
from billing.models import CreditHold, LedgerEntry
from chats import catalog
from chats.models import LLMModel, Message, ModelFallback
from governor.models import AuditRecord
from tests.fakes.upstream import FakeUpstream, expected_text, unused_port
from tests.live import start_server
from tests.transports.conftest import error_body, events, poll, post_events, unique

pytestmark = pytest.mark.django_db(transaction=True)

PRIMARY_PRICES = (Decimal("1.000000"), Decimal("2.000000"))
BACKUP_PRICES = (Decimal("10.000000"), Decimal("20.000000"))


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream.running() as up:
        yield up


def deploy(name: str, upstream_model: str, base_url: str, prices, **fields) -> LLMModel:
    return LLMModel.objects.create(
        name=name,
        provider="openai_compatible",
        upstream_model=upstream_model,
        base_url=base_url,
        input_price_per_1k=prices[0],
        output_price_per_1k=prices[1],
        context_window=16000,
        **fields,
    )


class Pair:
    """A first model and its fallback, each under a name no other run uses."""

    def __init__(self, upstream: FakeUpstream, primary_behaviour: str, base_url: str = ""):
        tag = uuid.uuid4().hex[:6]
        self.upstream = upstream
        self.primary = deploy(
            f"first-{tag}",
            f"first-{tag}+{primary_behaviour}",
            base_url or upstream.openai_base_url,
            PRIMARY_PRICES,
        )
        self.backup = deploy(
            f"backup-{tag}", f"backup-{tag}+tokens-5", upstream.openai_base_url, BACKUP_PRICES
        )
        ModelFallback.objects.create(model=self.primary, fallback=self.backup)
        catalog.clear_catalog_cache()

    def asked(self, deployment: LLMModel) -> int:
        """How many requests the upstream had for ``deployment``."""
        return sum(
            1 for body in self.upstream.requests if body.get("model") == deployment.upstream_model
        )


def charged_at(prices, usage: dict) -> Decimal:
    return pricing.cost(
        input_price_per_1k=prices[0],
        output_price_per_1k=prices[1],
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
    )


def ledger_of(request_id: str) -> dict[str, Decimal]:
    rows = LedgerEntry.objects.filter(reference=request_id).values_list("kind", "amount")
    return dict(rows)


def regpilot(server, account, model: str, text: str, request_id: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/ai/chat",
        json={"messages": [{"role": "user", "content": text}], "model": model},
        headers={**account.headers, "X-Request-ID": request_id},
        timeout=30,
    )


def request_id() -> str:
    return f"fallback-{uuid.uuid4().hex}"


@pytest.mark.parametrize("failure", ["status-500", "status-429", "status-503", "drop", "refused"])
def test_a_first_model_failing_before_its_first_token_falls_back(
    server, account, upstream, failure
):
    refused = f"http://127.0.0.1:{unused_port()}/v1"
    pair = Pair(upstream, failure, base_url=refused if failure == "refused" else "")
    before, rid = account.balance(), request_id()
    with httpx.stream(
        "POST",
        f"{server.url}/api/ai/chat",
        json={"messages": [{"role": "user", "content": unique()}], "model": pair.primary.name},
        headers={**account.headers, "X-Request-ID": rid},
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.read()
        stream = events(response)
    assert response.headers["x-regpilot-model"] == pair.backup.name
    assert "".join(
        e.json()["content"] for e in stream if e.event == "message" and e.data != "[DONE]"
    ) == expected_text(5)
    usage = next(e.json() for e in stream if e.event == "usage")
    assert usage["model"] == pair.backup.name
    # The fallback's prices, not the first model's, and the ledger agrees with the balance.
    charged = charged_at(BACKUP_PRICES, usage)
    assert Decimal(str(usage["credits_charged"])) == charged > charged_at(PRIMARY_PRICES, usage)
    assert before - account.balance() == charged
    ledger = ledger_of(rid)
    assert -ledger[LedgerEntry.Kind.HOLD] - ledger[LedgerEntry.Kind.SETTLE] == charged
    assert CreditHold.objects.get(reference=rid).model == pair.backup.name
    audit = AuditRecord.objects.get(request_id=rid)  # append-only: asked for, answered by
    assert (audit.model, audit.output_findings["answered_by"]) == (
        pair.primary.name,
        pair.backup.name,
    )
    assert pair.asked(pair.primary) == (0 if failure == "refused" else 1)
    assert pair.asked(pair.backup) == 1


def test_openai_chunks_and_the_stored_message_name_the_fallback(server, account, upstream):
    pair = Pair(upstream, "status-502")
    body = {
        "model": pair.primary.name,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": unique()}],
    }
    _, stream = post_events(
        f"{server.url}/v1/chat/completions", body, {"Authorization": f"Bearer {account.key}"}
    )
    chunks = [e.json() for e in stream if e.data != "[DONE]"]
    assert {chunk["model"] for chunk in chunks} == {pair.backup.name}
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 5

    said = unique()
    _, ui = post_events(
        f"{server.url}/api/chat", {"prompt": said, "model": pair.primary.name}, account.headers
    )
    chunks = [e.json() for e in ui[:-1]]
    assert chunks[-2]["messageMetadata"]["model"] == pair.backup.name
    chat_id = chunks[0]["messageMetadata"]["chatId"]
    answer = Message.objects.get(chat_id=chat_id, role="assistant")
    assert (answer.model, answer.content, answer.status) == (
        pair.backup.name,
        expected_text(5),
        "complete",
    )


def test_a_failure_after_tokens_is_never_retried(server, account, upstream):
    pair = Pair(upstream, "fail-after-2")
    before, rid = account.balance(), request_id()
    with httpx.stream(
        "POST",
        f"{server.url}/api/ai/chat",
        json={"messages": [{"role": "user", "content": unique()}], "model": pair.primary.name},
        headers={**account.headers, "X-Request-ID": rid},
        timeout=30,
    ) as response:
        stream = events(response)
    assert response.headers["x-regpilot-model"] == pair.primary.name
    assert [e.event for e in stream] == ["message"] * 2 + ["error", "usage", "message"]
    assert "".join(e.json()["content"] for e in stream[:2]) == expected_text(2)
    usage = stream[3].json()
    assert usage["model"] == pair.primary.name
    assert Decimal(str(usage["credits_charged"])) == charged_at(PRIMARY_PRICES, usage)
    assert before - account.balance() == Decimal(str(usage["credits_charged"]))
    assert (pair.asked(pair.primary), pair.asked(pair.backup)) == (1, 0)


def test_when_every_model_fails_the_endpoint_answers_its_own_error_and_charges_nothing(
    server, account, upstream
):
    pair = Pair(upstream, "status-500")
    LLMModel.objects.filter(pk=pair.backup.pk).update(
        upstream_model=pair.backup.upstream_model + "+status-503"
    )
    pair.backup.refresh_from_db()
    catalog.clear_catalog_cache()
    before, rid = account.balance(), request_id()
    response = regpilot(server, account, pair.primary.name, unique(), rid)
    assert response.status_code == 502
    error = error_body(response)
    assert error["code"] == "LLM_PROVIDER_ERROR"
    assert "HTTP 503" in error["message"] and pair.backup.name in error["message"]  # the last
    assert response.headers["x-regpilot-model"] == pair.primary.name  # none answered
    # The hold is released whole: nothing charged.
    poll(lambda: len(ledger_of(rid)) > 1)
    ledger = ledger_of(rid)
    assert (
        ledger[LedgerEntry.Kind.HOLD]
        + sum(a for k, a in ledger.items() if k != LedgerEntry.Kind.HOLD)
        == 0
    )
    assert account.balance() == before
    assert (pair.asked(pair.primary), pair.asked(pair.backup)) == (1, 1)

    body = {
        "model": pair.primary.name,
        "stream": True,
        "messages": [{"role": "user", "content": unique()}],
    }
    openai = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {account.key}"},
        timeout=30,
    )
    assert openai.status_code == 502
    error = openai.json()["error"]  # OpenAI's error shape
    assert (error["type"], error["code"]) == ("api_error", "upstream_error")


# --- Two server processes on one Redis ----------------------------------------------------


@pytest.fixture(scope="module")
def cooling_servers(live_server_process, tmp_path_factory):
    """Two servers that cool a model down after 2 failures, and wait 1 s for a token."""
    env = {
        "MODEL_COOLDOWN_FAILURES": "2",
        "MODEL_COOLDOWN_SECONDS": "60",
        "LLM_TIMEOUT_SECONDS": "1",
    }
    servers = [start_server(tmp_path_factory.mktemp(f"cooling{i}"), **env) for i in range(2)]
    yield servers
    for each in servers:
        each.stop()


@pytest.mark.skipif(not settings.REDIS_URL, reason="cool-downs are shared through Redis")
def test_a_cool_down_is_shared_by_every_process(server, cooling_servers, account, upstream):
    first, second = cooling_servers
    pair = Pair(upstream, "status-500")
    for _ in range(2):  # two failures through the first process: the model cools down
        response = regpilot(first, account, pair.primary.name, unique(), request_id())
        assert response.headers["x-regpilot-model"] == pair.backup.name
    assert pair.asked(pair.primary) == 2
    # The other process skips it: the first model is not asked again.
    for _ in range(3):
        response = regpilot(second, account, pair.primary.name, unique(), request_id())
        assert response.status_code == 200
        assert response.headers["x-regpilot-model"] == pair.backup.name
    assert (pair.asked(pair.primary), pair.asked(pair.backup)) == (2, 5)


def test_a_first_model_that_does_not_answer_in_time_falls_back(
    server, cooling_servers, account, upstream
):
    pair = Pair(upstream, "hang")
    response = regpilot(cooling_servers[0], account, pair.primary.name, unique(), request_id())
    assert response.status_code == 200
    assert response.headers["x-regpilot-model"] == pair.backup.name
    assert (pair.asked(pair.primary), pair.asked(pair.backup)) == (1, 1)


# --- A tier over weighted deployments -------------------------------------------------


def test_a_tiers_requests_are_spread_by_priority_and_weight(server, account, upstream):
    tag = uuid.uuid4().hex[:6]
    heavy = deploy(
        f"heavy-{tag}",
        f"heavy-{tag}+tokens-1",
        upstream.openai_base_url,
        PRIMARY_PRICES,
        tier="frontier",
        priority=1,
        weight=3,
    )
    light = deploy(
        f"light-{tag}",
        f"light-{tag}+tokens-1",
        upstream.openai_base_url,
        PRIMARY_PRICES,
        tier="frontier",
        priority=1,
        weight=1,
    )
    spare = deploy(
        f"spare-{tag}",
        f"spare-{tag}+tokens-1",
        upstream.openai_base_url,
        PRIMARY_PRICES,
        tier="frontier",
        priority=2,
        weight=100,
    )
    served = []
    for _ in range(8):
        response = httpx.post(
            f"{server.url}/api/ai/chat",
            json={"messages": [{"role": "user", "content": unique()}], "quality": "frontier"},
            headers=account.headers,
            timeout=30,
        )
        served.append(response.headers["x-regpilot-model"])
    # The lower priority is only a fallback; equal priorities take turns 3:1, exactly.
    assert served.count(heavy.name) == 6 and served.count(light.name) == 2
    assert spare.name not in served
