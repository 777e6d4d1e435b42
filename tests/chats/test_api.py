import uuid

import pytest

from chats.models import Chat, EndUser, Message
from tests.factories import make_chat, make_key, make_messages, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def other_api(client_for):
    """A client of another tenant."""
    return client_for(make_key(make_tenant(name="other")))


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    return error


# --- create -------------------------------------------------------------------------


def test_create_chat_as_documented(api):
    response = api.post("/api/v1/chats/", {"user_id": "user123"}, format="json")
    assert response.status_code == 201
    body = response.json()
    uuid.UUID(body["id"])
    assert body["user_id"] == "user123"
    assert body["message_count"] == 0
    assert EndUser.objects.get(external_id="user123").tenant.name == "acme"


def test_create_chat_with_title_and_metadata(api):
    body = {"user_id": "u1", "title": "Billing", "metadata": {"channel": "web", "n": 1}}
    response = api.post("/api/v1/chats", body, format="json")
    assert response.status_code == 201
    chat = Chat.objects.get(pk=response.json()["id"])
    assert (chat.title, chat.metadata) == ("Billing", {"channel": "web", "n": 1})


def test_second_chat_reuses_the_end_user(api):
    api.post("/api/v1/chats/", {"user_id": "u1"}, format="json")
    api.post("/api/v1/chats/", {"user_id": "u1"}, format="json")
    assert EndUser.objects.filter(external_id="u1").count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": 123}, "user_id"),
        ({"user_id": None}, "user_id"),
        ({"user_id": "x" * 256}, "user_id"),
        ({"user_id": "u", "title": 5}, "title"),
        ({"user_id": "u", "metadata": "text"}, "metadata"),
        ({"user_id": "u", "metadata": [1, 2]}, "metadata"),
    ],
)
def test_create_rejects_bad_fields(api, body, field):
    error = error_of(api.post("/api/v1/chats/", body, format="json"), 400, "VALIDATION_ERROR")
    assert field in error["details"]
    assert not Chat.objects.exists()


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", '"text"', "null"])
def test_create_rejects_body_that_is_not_a_json_object(api, payload):
    response = api.post("/api/v1/chats/", payload, content_type="application/json")
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert error["details"]


def test_create_rejects_non_json_content_type(api):
    response = api.post("/api/v1/chats/", "user_id=u1", content_type="text/plain")
    error_of(response, 400, "VALIDATION_ERROR")


# --- get, list, delete ----------------------------------------------------------------


def test_get_chat_with_message_count(api, tenant):
    chat = make_chat(tenant, title="Hello")
    make_messages(chat, 3)
    body = api.get(f"/api/v1/chats/{chat.id}").json()
    assert body["id"] == str(chat.id)
    assert body["title"] == "Hello"
    assert body["message_count"] == 3


def test_get_unknown_chat_is_404(api):
    error_of(api.get(f"/api/v1/chats/{uuid.uuid4()}"), 404, "CHAT_NOT_FOUND")


def test_non_uuid_chat_id_is_400(api):
    error = error_of(api.get("/api/v1/chats/not-a-uuid"), 400, "VALIDATION_ERROR")
    assert "chat_id" in error["details"]


def test_list_user_chats_newest_first(api, tenant):
    first = make_chat(tenant, user_id="u1")
    second = make_chat(tenant, user_id="u1")
    make_chat(tenant, user_id="u2")
    body = api.get("/api/v1/chats/user/u1").json()
    assert [c["id"] for c in body["chats"]] == [str(second.id), str(first.id)]
    assert (body["total"], body["has_more"]) == (2, False)


def test_list_user_chats_pages(api, tenant):
    for _ in range(3):
        make_chat(tenant, user_id="u1")
    body = api.get("/api/v1/chats/user/u1?offset=1&limit=1").json()
    assert (len(body["chats"]), body["total"], body["has_more"]) == (1, 3, True)


def test_list_unknown_user_is_empty(api):
    body = api.get("/api/v1/chats/user/nobody").json()
    assert body["chats"] == [] and body["total"] == 0


def test_delete_removes_chat_and_messages(api, tenant):
    chat = make_chat(tenant)
    make_messages(chat, 4)
    assert api.delete(f"/api/v1/chats/{chat.id}").status_code == 204
    assert not Chat.objects.filter(pk=chat.id).exists()
    assert not Message.objects.filter(chat_id=chat.id).exists()
    error_of(api.get(f"/api/v1/chats/{chat.id}"), 404, "CHAT_NOT_FOUND")


def test_unsupported_method_is_405_in_envelope(api, tenant):
    chat = make_chat(tenant)
    error_of(api.put(f"/api/v1/chats/{chat.id}", {}, format="json"), 405, "METHOD_NOT_ALLOWED")


# --- tenant isolation -----------------------------------------------------------------


def test_other_tenants_chat_is_404_like_a_missing_one(api, other_api, tenant):
    chat = make_chat(tenant)
    make_messages(chat, 2)
    missing = api.get(f"/api/v1/chats/{uuid.uuid4()}")
    for response in (
        other_api.get(f"/api/v1/chats/{chat.id}"),
        other_api.get(f"/api/v1/chats/{chat.id}/messages"),
        other_api.delete(f"/api/v1/chats/{chat.id}"),
    ):
        assert response.status_code == 404
        assert response.json() == missing.json()
    assert Message.objects.filter(chat=chat).count() == 2


def test_other_tenants_users_are_invisible(api, other_api, tenant):
    make_chat(tenant, user_id="shared-id")
    assert other_api.get("/api/v1/chats/user/shared-id").json()["total"] == 0
    other_api.post("/api/v1/chats/", {"user_id": "shared-id"}, format="json")
    assert api.get("/api/v1/chats/user/shared-id").json()["total"] == 1
    assert EndUser.objects.filter(external_id="shared-id").count() == 2


# --- messages pagination --------------------------------------------------------------


@pytest.fixture
def chat_with_messages(tenant):
    chat = make_chat(tenant)
    return chat, make_messages(chat, 7)


def page(api, chat, query=""):
    response = api.get(f"/api/v1/chats/{chat.id}/messages{query}")
    assert response.status_code == 200, response.content
    return response.json()


def test_messages_default_page(api, chat_with_messages):
    chat, messages = chat_with_messages
    body = page(api, chat)
    assert [m["id"] for m in body["messages"]] == [str(m.id) for m in messages]
    assert (body["total"], body["offset"], body["limit"], body["has_more"]) == (7, 0, 50, False)
    first = body["messages"][0]
    assert set(first) >= {"id", "chat_id", "role", "content", "status", "model", "created_at"}
    assert first["chat_id"] == str(chat.id)
    assert first["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@pytest.mark.parametrize(
    ("query", "expected", "has_more"),
    [
        ("?limit=3", [0, 1, 2], True),
        ("?offset=3&limit=3", [3, 4, 5], True),
        ("?offset=4&limit=3", [4, 5, 6], False),  # ends exactly at the last message
        ("?offset=6&limit=3", [6], False),
        ("?offset=7&limit=3", [], False),
        ("?offset=100", [], False),
        ("?order=desc&limit=3", [6, 5, 4], True),
        ("?order=desc&offset=4&limit=3", [2, 1, 0], False),
        ("?order=desc&offset=5&limit=3", [1, 0], False),
        ("?order=asc&limit=200", [0, 1, 2, 3, 4, 5, 6], False),
    ],
)
def test_messages_paging_edges(api, chat_with_messages, query, expected, has_more):
    chat, messages = chat_with_messages
    body = page(api, chat, query)
    assert [m["id"] for m in body["messages"]] == [str(messages[i].id) for i in expected]
    assert body["total"] == 7
    assert body["has_more"] is has_more


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?offset=-1", "offset"),
        ("?offset=abc", "offset"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=1.5", "limit"),
        ("?order=sideways", "order"),
    ],
)
def test_messages_bad_query_is_400(api, chat_with_messages, query, field):
    chat, _ = chat_with_messages
    response = api.get(f"/api/v1/chats/{chat.id}/messages{query}")
    assert field in error_of(response, 400, "VALIDATION_ERROR")["details"]


def test_messages_of_non_uuid_chat_is_400(api):
    error_of(api.get("/api/v1/chats/123/messages"), 400, "VALIDATION_ERROR")


def test_oversized_body_is_413_in_the_envelope(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"user_id": "u1", "metadata": {"blob": "x" * 2000}}
    response = api.post("/api/v1/chats/", body, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert not Chat.objects.exists()


def test_an_unacceptable_accept_header_is_406_not_500(api, tenant):
    chat = make_chat(tenant)
    response = api.get(f"/api/v1/chats/{chat.id}", HTTP_ACCEPT="text/html")
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
