"""Model instances built positionally (chatproject.instances) are the ones the keyword
constructor makes."""

import uuid

import pytest

from chatproject import instances
from chats.models import Message
from governor.models import AuditRecord
from tests.factories import make_chat, make_tenant

pytestmark = pytest.mark.django_db


def state(instance) -> dict:
    """An instance's field values and cached relations; its defaults made per instance
    (key, timestamps) set aside."""
    values = {
        field.attname: getattr(instance, field.attname)
        for field in instance._meta.concrete_fields
        if field.name not in ("id", "created_at")
    }
    return values | {"cached": dict(instance._state.fields_cache), "adding": instance._state.adding}


def test_an_audit_record_is_the_keyword_built_one():
    tenant = make_tenant()
    values = {
        "tenant": tenant,
        "request_id": "req-1",
        "model": "demo/cheap",  # a field named like build()'s own first parameter
        "validated": True,
        "approved": False,
        "decision": "block",
        "risk_level": "high",
        "risk_score": 91,
        "violations": [{"rule": "pii"}],
        "policy_version": 4,
        "input_sha256": "0" * 64,
    }

    built = instances.build(AuditRecord, **values)

    assert state(built) == state(AuditRecord(**values))
    assert built.tenant is tenant and built.tenant_id == tenant.pk
    assert built.excerpt == "" and built.output_findings is None  # the defaults
    assert isinstance(built.id, uuid.UUID) and built.created_at is not None
    built.save(force_insert=True)
    assert state(AuditRecord.objects.get(pk=built.pk)) | {"cached": {}} == state(built) | {
        "cached": {},
        "adding": False,
    }


def test_a_key_given_by_attname_and_defaults_made_per_instance():
    chat = make_chat(make_tenant())
    first = instances.build(Message, chat_id=chat.pk, role="user", content="hi")
    second = instances.build(Message, chat_id=chat.pk, role="user", content="hi")

    assert state(first) == state(Message(chat_id=chat.pk, role="user", content="hi"))
    assert first.id != second.id
    assert first.tool_calls == [] and first.tool_calls is not second.tool_calls


def test_an_unknown_field_is_refused():
    with pytest.raises(TypeError, match="unexpected field: colour"):
        instances.build(Message, role="user", colour="red")
