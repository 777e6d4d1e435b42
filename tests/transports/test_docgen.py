"""POST /api/v1/chat/stream, the legacy /generate and the retired /message."""

import asyncio
import json
import uuid

import httpx
import pytest
from django.test import AsyncClient

from chats.models import Chat, Message
from chats.services import conversation_chat_id
from governor.models import AuditRecord
from knowledge import services as knowledge_services
from knowledge.models import Project
from knowledge.retrieval import RetrievalError
from tests.factories import make_chat, make_tenant
from tests.transports.conftest import (
    assert_hold_settled,
    demo_reply,
    error_body,
    poll,
    post_events,
    read_then_disconnect,
    unique,
)

pytestmark = pytest.mark.django_db(transaction=True)

# The format's request, every field set.
FULL_REQUEST = {
    "message": "Draft the manifesto for a bike-sharing app.",
    "conversation_id": "conv-2024-001",
    "project_id": "proj-bikes",
    "user_name": "Ada",
    "document_type": "PROJECT_MANIFESTO",
    "history": [
        {"role": "user", "content": "We are building a bike-sharing app."},
        {"role": "assistant", "content": "Great, tell me more."},
    ],
    "existing_documents": {"TECH_STACK.md": "# Tech stack\nDjango, PostgreSQL."},
    "metadata": {"client": "docgen-web", "version": "2.1"},
}


def stream_url(server) -> str:
    return f"{server.url}/api/v1/chat/stream"


def assistant_message(chat_id) -> Message | None:
    return Message.objects.filter(chat_id=chat_id, role="assistant").first()


def test_full_request_streams_message_events_then_a_filled_done(server, account):
    request = {**FULL_REQUEST, "message": unique(FULL_REQUEST["message"])}
    response, stream = post_events(stream_url(server), request, account.headers)

    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"]
    names = [e.event for e in stream]
    assert names[-1] == "done"
    assert set(names[:-1]) == {"message"}
    tokens = [e.json() for e in stream[:-1]]
    assert all(t["done"] is False and isinstance(t["token"], str) for t in tokens)

    done = stream[-1].json()
    assert done["done"] is True
    assert done["full_response"] == "".join(t["token"] for t in tokens)
    assert done["full_response"] == demo_reply(request["message"])
    assert "PROJECT_MANIFESTO" in done["document_types_used"]
    metadata = done["metadata"]
    assert metadata["conversation_id"] == "conv-2024-001"
    assert metadata["model"] == "demo/balanced"
    assert metadata["usage"]["completion_tokens"] == len(tokens)
    assert metadata["duration_ms"] >= 0
    assert metadata["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "supplied",
    [
        {"existing_documents": {"KEYS.md": "prod key sk_live_a1B2c3D4e5F6g7H8i9J0kL"}},
        {"user_name": "Ada sk_live_a1B2c3D4e5F6g7H8i9J0kL"},
    ],
)
def test_what_the_client_puts_into_the_system_prompt_is_governed(server, account, supplied):
    request = {"message": unique("Draft the security notes."), **supplied}
    response = httpx.post(stream_url(server), json=request, headers=account.headers, timeout=30)
    assert response.status_code == 403
    error = error_body(response)
    assert error["code"] == "GOVERNOR_REJECTED"
    record = AuditRecord.objects.get(pk=error["details"]["audit_id"])
    assert (record.approved, record.request_id) == (False, response.headers["x-request-id"])


def test_a_refused_request_starts_no_conversation(server, account):
    request = {"message": "my key sk_live_a1B2c3D4e5F6g7H8i9J0kL", "conversation_id": "refused"}
    response = httpx.post(stream_url(server), json=request, headers=account.headers, timeout=30)
    assert response.status_code == 403
    assert not Chat.objects.filter(pk=conversation_chat_id(account.tenant, "refused")).exists()


def test_conversation_is_a_chat_of_the_tenant_reused_across_requests(server, account):
    request = {"message": unique("first"), "conversation_id": "conv-a"}
    _, first = post_events(stream_url(server), request, account.headers)
    _, second = post_events(
        stream_url(server), {**request, "message": unique("second")}, account.headers
    )
    chat_id = first[-1].json()["metadata"]["chat_id"]
    assert second[-1].json()["metadata"]["chat_id"] == chat_id
    assert chat_id == str(conversation_chat_id(account.tenant, "conv-a"))

    chat = Chat.objects.select_related("end_user").get(pk=chat_id)
    assert chat.tenant_id == account.tenant.pk
    assert chat.end_user.external_id == "docgen"
    assert chat.metadata["conversation_id"] == "conv-a"
    stored = list(Message.objects.filter(chat=chat).values_list("role", "status", "content"))
    assert [(role, status) for role, status, _ in stored] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ] * 2
    assert stored[1][2] == first[-1].json()["full_response"]


def test_conversation_id_may_be_an_existing_chat_id(server, account):
    chat = make_chat(account.tenant)
    _, stream = post_events(
        stream_url(server),
        {"message": unique(), "conversation_id": str(chat.pk)},
        account.headers,
    )
    assert stream[-1].json()["metadata"]["chat_id"] == str(chat.pk)
    assert Message.objects.filter(chat=chat).count() == 2


def test_another_tenants_chat_id_is_never_written_to(server, account):
    other_chat = make_chat(make_tenant())
    _, stream = post_events(
        stream_url(server),
        {"message": unique(), "conversation_id": str(other_chat.pk)},
        account.headers,
    )
    chat_id = stream[-1].json()["metadata"]["chat_id"]
    assert chat_id != str(other_chat.pk)
    assert Chat.objects.get(pk=chat_id).tenant_id == account.tenant.pk
    assert not Message.objects.filter(chat=other_chat).exists()


def test_the_chat_of_a_conversation_id_does_not_depend_on_other_tenants_chats(server, account):
    theirs = make_chat(make_tenant())
    for conversation_id in (str(theirs.pk), str(uuid.uuid4())):
        _, stream = post_events(
            stream_url(server),
            {"message": unique(), "conversation_id": conversation_id},
            account.headers,
        )
        chat_id = stream[-1].json()["metadata"]["chat_id"]
        assert chat_id == str(conversation_chat_id(account.tenant, conversation_id))


def test_without_conversation_id_a_new_conversation_starts(server, account):
    _, stream = post_events(stream_url(server), {"message": unique()}, account.headers)
    metadata = stream[-1].json()["metadata"]
    assert metadata["chat_id"] == metadata["conversation_id"]
    assert Chat.objects.filter(pk=metadata["chat_id"], tenant=account.tenant).exists()


def test_history_reaches_the_model(server, account):
    message = unique()
    _, alone = post_events(stream_url(server), {"message": message}, account.headers)
    _, with_history = post_events(
        stream_url(server),
        {"message": message, "history": [{"role": "user", "content": "word " * 400}]},
        account.headers,
    )
    prompt_alone = alone[-1].json()["metadata"]["usage"]["prompt_tokens"]
    prompt_with = with_history[-1].json()["metadata"]["usage"]["prompt_tokens"]
    assert prompt_with >= prompt_alone + 400


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"message": None}, "message"),
        ({"message": ""}, "message"),
        ({"message": 42}, "message"),
        ({"message": "x" * 20001}, "message"),
        ({"user_name": "n" * 101}, "user_name"),
        ({"conversation_id": 7}, "conversation_id"),
        ({"project_id": ["p"]}, "project_id"),
        ({"document_type": "not a type!"}, "document_type"),
        ({"history": "earlier"}, "history"),
        ({"history": [{"role": "user", "content": "x"}] * 101}, "history"),
        ({"history": [{"role": "robot", "content": "x"}]}, "history[0].role"),
        ({"history": [{"role": "user"}]}, "history[0].content"),
        ({"history": ["x"]}, "history[0]"),
        ({"existing_documents": ["A.md"]}, "existing_documents"),
        ({"existing_documents": {"A.md": 1}}, "existing_documents.A.md"),
        ({"metadata": "x"}, "metadata"),
    ],
)
def test_validation_errors_are_422_naming_the_field(server, account, payload, field):
    request = {"message": "hello", **payload}
    if request["message"] is None:
        del request["message"]
    response = httpx.post(stream_url(server), json=request, headers=account.headers)
    assert response.status_code == 422
    error = error_body(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert field in error["details"], error


def test_invalid_json_is_422(server, account):
    response = httpx.post(stream_url(server), content=b"{", headers=account.headers)
    assert response.status_code == 422


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "sk_live_wrong"}])
def test_bad_or_missing_key_is_403(server, account, headers):
    response = httpx.post(stream_url(server), json={"message": "hi"}, headers=headers)
    assert response.status_code == 403
    assert error_body(response)["code"] == "UNAUTHORIZED"


def test_upstream_failure_mid_stream_is_an_error_event_and_stored_failed(server, account):
    _, stream = post_events(
        stream_url(server),
        {"message": unique("[demo:fail-after=3] go"), "conversation_id": "conv-fail"},
        account.headers,
    )
    assert [e.event for e in stream] == ["message"] * 3 + ["error"]
    error = stream[-1].json()
    assert error["code"] == "LLM_CONNECTION_ERROR"
    assert error["retryable"] is True
    assert error["error"]
    stored = assistant_message(conversation_chat_id(account.tenant, "conv-fail"))
    assert stored.status == "failed"
    assert stored.content == "".join(e.json()["token"] for e in stream[:3])


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (400, False)])
def test_provider_errors_map_to_llm_connection_error(server, account, status, retryable):
    _, stream = post_events(
        stream_url(server), {"message": unique(f"[demo:error={status}]")}, account.headers
    )
    assert [e.event for e in stream] == ["error"]
    error = stream[0].json()
    assert error["code"] == "LLM_CONNECTION_ERROR"
    assert error["retryable"] is retryable
    assert "provider" in error["error"]


def test_a_client_that_leaves_leaves_the_answer_running_to_the_end(server, account):
    read_then_disconnect(
        stream_url(server),
        {"message": "[demo:tokens=40][demo:delay=20] long", "conversation_id": "conv-gone"},
        account.headers,
        lines=6,
    )
    chat_id = conversation_chat_id(account.tenant, "conv-gone")
    stored = poll(lambda: (m := assistant_message(chat_id)) and m.status == "complete" and m)
    assert stored.completion_tokens == 40
    assert stored.content.startswith("lorem ipsum")


def test_retrieval_failure_is_a_rag_error_event(account, monkeypatch):
    def broken(**kwargs):
        raise RetrievalError("index unavailable")

    monkeypatch.setattr(knowledge_services, "build_context", broken)

    async def run():
        response = await AsyncClient().post(
            "/api/v1/chat/stream",
            {"message": "hi"},
            content_type="application/json",
            headers={"X-API-Key": account.key},
        )
        chunks = [chunk async for chunk in response.streaming_content]
        return response, b"".join(chunks).decode()

    response, text = asyncio.run(run())
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert "event: error" in text
    data = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
    assert data["code"] == "RAG_RETRIEVAL_ERROR"
    assert data["retryable"] is True


# --- Legacy /generate and retired /message ----------------------------------------------


def test_generate_streams_tokens_with_real_indexes_and_totals(server, account):
    message = unique("Write the tech stack")
    _, stream = post_events(
        f"{server.url}/api/v1/chat/generate",
        {"message": message, "document_type": "TECH_STACK", "metadata": {"project_id": "p"}},
        account.headers,
    )
    tokens = [e.json() for e in stream if e.event == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert "".join(t["token"] for t in tokens) == demo_reply(message)
    assert stream[-1].event == "done"
    done = stream[-1].json()
    assert done["total_tokens"] == len(tokens)
    assert isinstance(done["duration_ms"], int) and done["duration_ms"] > 0


def test_generate_failure_is_an_error_event_with_code_and_message(server, account):
    _, stream = post_events(
        f"{server.url}/api/v1/chat/generate",
        {"message": unique("[demo:fail-after=1] go")},
        account.headers,
    )
    assert [e.event for e in stream] == ["token", "error"]
    assert stream[-1].json()["code"] == "LLM_CONNECTION_ERROR"
    assert stream[-1].json()["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "message"),
        ({"message": ""}, "message"),
        ({"message": "hi", "document_type": "a b"}, "document_type"),
        ({"message": "hi", "metadata": []}, "metadata"),
        ({"message": "hi", "history": [{"role": "x", "content": "y"}]}, "history[0].role"),
    ],
)
def test_generate_validation_errors_are_422(server, account, payload, field):
    response = httpx.post(
        f"{server.url}/api/v1/chat/generate", json=payload, headers=account.headers
    )
    assert response.status_code == 422
    assert field in error_body(response)["details"]


def test_generate_bad_key_is_403(server, account):
    response = httpx.post(
        f"{server.url}/api/v1/chat/generate",
        json={"message": "hi"},
        headers={"X-API-Key": "sk_live_x"},
    )
    assert response.status_code == 403


def test_generate_client_disconnect_settles_the_hold(server, account):
    before = account.balance()
    request_id = f"gen-{uuid.uuid4().hex}"
    read_then_disconnect(
        f"{server.url}/api/v1/chat/generate",
        {"message": "[demo:tokens=400][demo:delay=20] long"},
        {**account.headers, "X-Request-ID": request_id},
        lines=6,
    )
    assert_hold_settled(account, request_id, before)


def test_message_endpoint_is_retired_with_400(server, account):
    response = httpx.post(
        f"{server.url}/api/v1/chat/message", json={"message": "hi"}, headers=account.headers
    )
    assert response.status_code == 400
    error = error_body(response)
    assert "/api/v1/chat/stream" in error["message"]


def test_an_unknown_project_id_is_reported_in_the_done_metadata(server, account):
    request = {"message": unique("Draft the manifesto."), "project_id": "no-such-project"}
    _, stream = post_events(stream_url(server), request, account.headers)
    metadata = stream[-1].json()["metadata"]
    assert metadata["project_found"] is False
    assert metadata["sources"] == []
    assert "project_id" in metadata["warnings"][0]


def test_a_known_project_id_is_reported_found(server, account):
    Project.objects.create(tenant=account.tenant, external_id="bikes")
    request = {"message": unique("Draft the manifesto."), "project_id": "bikes"}
    _, stream = post_events(stream_url(server), request, account.headers)
    metadata = stream[-1].json()["metadata"]
    assert metadata["project_found"] is True
    assert "warnings" not in metadata
