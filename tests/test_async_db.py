"""Statements built from the models without the ORM's compiler (chatproject.async_db): their
parameters are the values the ORM itself would send."""

import uuid
from datetime import datetime

import pytest
from django.db import connection
from django.utils import timezone

from chatproject import async_db
from chats.models import Message
from governor.models import AuditRecord

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the statements are PostgreSQL's"),
]


def orm_values(instance) -> list:
    """What the ORM sends for each concrete field of ``instance`` in an INSERT."""
    converter = async_db._converter()
    return [
        field.get_db_prep_save(field.pre_save(instance, True), converter)
        for field in instance._meta.concrete_fields
    ]


def comparable(value):
    """psycopg's wrappers (sized integers, Jsonb) compared by type and what they hold."""
    return (type(value), getattr(value, "obj", value))


@pytest.mark.parametrize(
    "instance",
    [
        AuditRecord(
            tenant_id=3,
            request_id="req-1",
            model="demo/cheap",
            sender_id="",
            validated=True,
            approved=False,
            decision="rejected",
            risk_level="high",
            risk_score=70,
            violations=[{"rule": "pii.email", "points": 20}],
            policy_version=2,
            input_sha256="a" * 64,
            excerpt="an excerpt",
            created_at=datetime(2026, 1, 2, 3, 4, 5),  # naive: the ORM makes it aware
            output_findings=None,
            reviewed_by_id=None,
        ),
        Message(
            chat_id=uuid.uuid4(),
            role=Message.Role.USER,  # an enum member, not a plain str
            content="hello\nworld",
            client_message_id="",
            created_at=timezone.now(),
            prompt_tokens=12,
        ),
    ],
    ids=["audit record", "message"],
)
@pytest.mark.filterwarnings("ignore:DateTimeField AuditRecord.created_at received a naive")
def test_an_insert_sends_what_the_orm_would(instance):
    _, params = async_db.insert(instance, "row")
    assert [comparable(v) for v in params.values()] == [comparable(v) for v in orm_values(instance)]


def test_named_parameters_become_postgresqls_own():
    query, names = async_db._native(
        "WITH a AS (SELECT %(x)s::int AS v) SELECT v, %(y)s, %(x)s, '100%%' FROM a"
    )
    assert query == b"WITH a AS (SELECT $1::int AS v) SELECT v, $2, $1, '100%' FROM a"
    assert names == ("x", "y")
    with pytest.raises(ValueError, match="only named parameters"):
        async_db._native("SELECT %s")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_long_statement_runs_with_its_parameters_in_place(settings):
    """Longer than psycopg would keep converted (4 KB, 50 parameters): the values still
    land where they are named, a repeated name as one value."""
    settings.ASYNC_DATABASE_POOL = True
    columns = [f"%(p{i})s::int AS c{i}" for i in range(80)]
    sql = f"SELECT {', '.join(columns)}, %(p3)s::int + %(p79)s::int, {'1' + ' ' * 4096}"
    try:
        row = await async_db.fetch_one(sql, {f"p{i}": i * 10 for i in range(80)} | {"extra": 1})
    finally:
        await async_db.close()
    assert list(row) == [i * 10 for i in range(80)] + [30 + 790, 1]


@pytest.mark.asyncio
async def test_a_missing_parameter_is_a_database_error():
    """The engine takes a statement the database refused to the ORM's path instead."""
    with pytest.raises(async_db.Error, match="query parameter missing: y"):
        await async_db.fetch_one("SELECT %(x)s, %(y)s", {"x": 1})
