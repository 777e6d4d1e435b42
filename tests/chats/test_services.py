"""Opening chats: the one service every transport opens a chat with, and the end user's
own chats."""

import uuid

import pytest

from chatproject.errors import ApiError, ErrorCode
from chats import selectors
from chats.models import Chat
from chats.services import chat_create, chat_open, conversation_chat_id
from tests.factories import make_chat, make_tenant


@pytest.mark.django_db
def test_conversation_keys_map_to_one_chat_per_tenant():
    tenant, other = make_tenant(), make_tenant()
    first, created = chat_open(tenant=tenant, key="conv-1", user_id="docgen")
    again, created_again = chat_open(tenant=tenant, key="conv-1", user_id="docgen")
    elsewhere, _ = chat_open(tenant=other, key="conv-1", user_id="docgen")
    assert (created, created_again) == (True, False)
    assert first.pk == again.pk == conversation_chat_id(tenant, "conv-1")
    assert first.end_user.external_id == "docgen"
    assert elsewhere.pk != first.pk
    assert elsewhere.tenant_id == other.pk


@pytest.mark.django_db
def test_a_uuid_key_is_the_chat_id_unless_another_tenant_has_it():
    tenant = make_tenant()
    own = make_chat(tenant)
    assert chat_open(tenant=tenant, key=str(own.pk), user_id="x") == (own, False)
    foreign = make_chat(make_tenant())
    chat, created = chat_open(tenant=tenant, key=str(foreign.pk), user_id="x")
    assert created
    assert chat.pk == conversation_chat_id(tenant, str(foreign.pk))
    assert chat.tenant_id == tenant.pk


@pytest.mark.django_db
def test_a_fresh_key_becomes_the_new_chats_id():
    tenant = make_tenant()
    key = uuid.uuid4()
    chat, created = chat_open(tenant=tenant, key=key, user_id="u", title="t" * 300, fresh=True)
    assert created
    assert chat.pk == key
    assert Chat.objects.get(pk=key).title == "t" * 255


@pytest.mark.django_db
def test_chat_create_reports_whether_the_end_user_is_new():
    tenant = make_tenant()
    _, user_created = chat_create(tenant=tenant, user_id="alice")
    _, again = chat_create(tenant=tenant, user_id="alice")
    assert (user_created, again) == (True, False)


@pytest.mark.django_db
def test_another_end_users_chat_is_not_found():
    tenant = make_tenant()
    chat = make_chat(tenant, user_id="alice")
    found = selectors.chat_get_for_user(tenant=tenant, chat_id=chat.pk, user_id="alice")
    assert found.pk == chat.pk
    with pytest.raises(ApiError) as refused:
        selectors.chat_get_for_user(tenant=tenant, chat_id=chat.pk, user_id="bob")
    assert refused.value.code == ErrorCode.CHAT_NOT_FOUND
    with pytest.raises(ApiError) as elsewhere:
        selectors.chat_get_for_user(tenant=make_tenant(), chat_id=chat.pk, user_id="alice")
    assert elsewhere.value.code == ErrorCode.CHAT_NOT_FOUND


@pytest.mark.django_db
def test_a_chat_opened_for_its_user_is_not_counted_but_its_detail_is():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import make_messages

    tenant = make_tenant()
    chat = make_chat(tenant, user_id="u-1")
    make_messages(chat, 3)
    with CaptureQueriesContext(connection) as queries:  # each /ws/chat connect does this
        opened = selectors.chat_get_for_user(tenant=tenant, chat_id=chat.pk, user_id="u-1")
    assert opened == chat
    assert not any("COUNT(" in query["sql"].upper() for query in queries)
    assert selectors.chat_detail(tenant=tenant, chat_id=chat.pk).message_count == 3
