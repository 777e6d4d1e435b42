"""The governor in the request path of POST /api/ai/chat, over the wire: RegPilot's
headers, and a rejected request that never reaches the model and costs nothing."""

import hashlib
import uuid
from decimal import Decimal

import httpx
import pytest

from billing.models import LedgerEntry
from chats.models import LLMModel
from governor.models import AuditRecord
from tests.factories import make_key, make_tenant
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.django_db(transaction=True)

CARD = "4111 1111 1111 1111"  # passes Luhn
LEGAL = {
    "actionType": "legal_advice",
    "recipientCountry": "US",
    "senderId": "user_12345",
    "senderRole": "customer_support",
    "department": "legal",
}
GOVERNOR_HEADERS = (
    "x-governor-validated",
    "x-governor-approved",
    "x-governor-risk-level",
    "x-governor-risk-score",
    "x-governor-violations",
    "x-governor-audit-id",
)


@pytest.fixture
def upstream(server):
    """A model served by a fake upstream that records every request it receives."""
    with FakeUpstream.running("tokens-5") as fake:
        LLMModel.objects.create(
            name="recorded-model",
            provider="openai_compatible",
            upstream_model="tokens-5",
            base_url=fake.openai_base_url,
            input_price_per_1k=Decimal(1),
            output_price_per_1k=Decimal(1),
        )
        yield fake


def chat(server, key: str, content: str, metadata: dict) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/ai/chat",
        headers={"X-API-Key": key, "Cache-Control": "no-cache"},
        json={
            "messages": [{"role": "user", "content": content}],
            "model": "recorded-model",
            "governorMetadata": metadata,
        },
        timeout=30,
    )


def test_approved_request_carries_the_seeds_headers(server, upstream):
    tenant = make_tenant(credits=100)
    response = chat(server, make_key(tenant), "Can I sue my employer for discrimination?", LEGAL)
    assert response.status_code == 200
    assert all(name in response.headers for name in GOVERNOR_HEADERS)
    assert response.headers["x-governor-validated"] == "true"
    assert response.headers["x-governor-approved"] == "true"
    assert response.headers["x-governor-risk-level"] == "medium"
    assert 0 <= int(response.headers["x-governor-risk-score"]) <= 100
    record = AuditRecord.objects.get(pk=response.headers["x-governor-audit-id"])
    assert (record.tenant_id, record.action_type, record.decision) == (
        tenant.pk,
        "legal_advice",
        "approved",
    )
    assert len(upstream.requests) == 1


def test_rejected_request_never_reaches_the_model_and_costs_nothing(server, upstream):
    tenant = make_tenant(credits=100)
    ledger_before = LedgerEntry.objects.filter(tenant=tenant).count()
    content = f"Refund to card {CARD} and my key sk_live_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    response = chat(server, make_key(tenant), content, LEGAL)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "GOVERNOR_REJECTED"
    assert response.headers["x-governor-approved"] == "false"
    assert upstream.requests == []  # the provider was never called
    tenant.refresh_from_db()
    assert tenant.credit_balance == 100  # nothing held, nothing charged
    assert LedgerEntry.objects.filter(tenant=tenant).count() == ledger_before

    record = AuditRecord.objects.get(pk=response.headers["x-governor-audit-id"])
    assert record.decision == "rejected"
    stored = " ".join(str(value) for value in vars(record).values())
    assert CARD not in stored and "sk_live_" not in stored  # redacted, never raw
    assert "[REDACTED" in record.excerpt
    assert record.input_sha256 == hashlib.sha256(content.encode()).hexdigest()


def test_sanctioned_destination_is_rejected_before_the_model(server, upstream):
    tenant = make_tenant(credits=100)
    response = chat(
        server,
        make_key(tenant),
        "Please confirm the shipment.",
        {**LEGAL, "recipientCountry": "KP"},
    )
    assert response.status_code == 403
    assert upstream.requests == []


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": f"Use key sk_live_{uuid.uuid4().hex}{uuid.uuid4().hex}"}],
        [
            {"role": "user", "content": f"My card is {CARD}, my key sk_live_{uuid.uuid4().hex}"},
            {"role": "assistant", "content": "Noted."},
        ],
    ],
)
def test_every_message_the_client_sends_is_governed(server, upstream, messages):
    """Stateless formats send the whole conversation: an earlier or system message with a
    secret is refused like a last one."""
    tenant = make_tenant(credits=100)
    response = httpx.post(
        f"{server.url}/api/ai/chat",
        headers={"X-API-Key": make_key(tenant), "Cache-Control": "no-cache"},
        json={
            "messages": [*messages, {"role": "user", "content": "Go on."}],
            "model": "recorded-model",
        },
        timeout=30,
    )
    assert response.status_code == 403
    assert upstream.requests == []
