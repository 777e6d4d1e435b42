"""POST /api/v1/chat/stream with metadata.save_as: the answer goes into the project's
knowledge base, and the next generation retrieves it."""

import json

import httpx
import pytest

from knowledge.models import Document
from tests.transports.conftest import post_events, unique

pytestmark = pytest.mark.django_db(transaction=True)


def generate(server, account, message: str, **extra) -> dict:
    body = {
        "message": message,
        "project_id": "bikes",
        "document_type": "ARCHITECTURE_SPEC",
        **extra,
    }
    _, stream = post_events(f"{server.url}/api/v1/chat/stream", body, account.headers)
    assert stream[-1].event == "done", [e.event for e in stream]
    return json.loads(stream[-1].data)


def test_a_saved_answer_is_retrieved_by_the_next_generation(server, account):
    first = generate(
        server,
        account,
        unique("Describe the telemetry pipeline for bicycles"),
        metadata={"save_as": "TELEMETRY.md"},
    )
    saved = first["metadata"]["saved_document"]
    assert saved["saved"] is True and saved["created"] is True
    document = Document.objects.get(pk=saved["id"])
    assert (document.path, document.content) == ("TELEMETRY.md", first["full_response"])
    assert document.project.tenant_id == account.tenant.pk

    second = generate(server, account, unique("How does the telemetry pipeline work?"))
    assert "TELEMETRY.md" in second["metadata"]["sources"]


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": {"save_as": 42}},
        {"metadata": {"save_as": "  "}},
        {"metadata": {"save_as": "X.md"}, "project_id": None},
    ],
)
def test_bad_save_target_is_422(server, account, extra):
    body = {"message": "hi", "project_id": "bikes", **extra}
    body = {k: v for k, v in body.items() if v is not None}
    response = httpx.post(f"{server.url}/api/v1/chat/stream", json=body, headers=account.headers)
    assert response.status_code == 422
    assert "metadata.save_as" in response.json()["error"]["details"]
