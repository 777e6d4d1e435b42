"""Changing a tenant's balance, always with the ledger entry that records it.

Every change goes through one :class:`Change`: the balance moves by its signed amount and
one entry is written with the balance after, in the same statement (PostgreSQL) or the
same transaction, so the ledger's amounts always sum to the balance. Two forms:

- :func:`change_apply`: the change on its own, on any database (top-ups, releases, and
  the portable hold and settlement);
- :func:`change_sql`: the change as two common table expressions, ``change`` (the
  balance update) and ``entry`` (its ledger entry), for one-statement writes on
  PostgreSQL that change a hold's row in the same round trip. Its parameters are
  :meth:`Change.params`.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, overload

from django.db import connection
from django.utils import timezone

from billing.models import LedgerEntry, Tenant
from billing.pricing import QUANTUM

_TENANT = Tenant._meta.db_table
_LEDGER = LedgerEntry._meta.db_table


@dataclass(frozen=True)
class Change:
    """One change of a tenant's balance and what its ledger entry says about it."""

    tenant_id: int
    kind: str  # a LedgerEntry.Kind
    amount: Decimal  # signed: negative for a hold, positive for a top-up or a refund
    reference: str = ""
    note: str = ""

    def params(self, *, now: datetime | None = None, cover: Decimal | None = None) -> dict:
        """The parameters of :func:`change_sql` (``cover`` when it was asked for)."""
        params: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "delta": self.amount,
            "reference": self.reference,
            "note": self.note,
            "now": now or timezone.now(),
        }
        if cover is not None:
            params["cover"] = cover
        return params


def change_sql(*, cover: bool = False, only_if: str = "") -> str:
    """The CTEs ``change`` (RETURNING the new ``credit_balance``) and ``entry`` (RETURNING
    the entry's ``id``), to follow a ``WITH``; nothing is written unless the update is.

    ``cover``: change only a balance of at least ``%(cover)s`` (a hold that the balance
    must cover). ``only_if``: a further SQL condition (say, that an earlier CTE claimed
    the hold).
    """
    conditions = ["id = %(tenant_id)s"]
    if cover:
        conditions.append("credit_balance >= %(cover)s")
    if only_if:
        conditions.append(only_if)
    return f"""change AS (
    UPDATE {_TENANT} SET credit_balance = credit_balance + %(delta)s
    WHERE {" AND ".join(conditions)}
    RETURNING credit_balance
), entry AS (
    INSERT INTO {_LEDGER} (tenant_id, kind, amount, balance_after, reference, note, created_at)
    SELECT %(tenant_id)s, %(kind)s, %(delta)s, credit_balance, %(reference)s, %(note)s, %(now)s
    FROM change
    RETURNING id
)"""  # noqa: S608 (only the models' own table names and fixed conditions are formatted in)


def as_credits(value) -> Decimal:
    """A balance read from the database. SQLite hands NUMERIC results back as int/float;
    PostgreSQL as Decimal."""
    return Decimal(str(value)).quantize(QUANTUM)


@overload
def change_apply(change: Change) -> LedgerEntry: ...
@overload
def change_apply(change: Change, *, cover: Decimal | None) -> LedgerEntry | None: ...
def change_apply(change: Change, *, cover: Decimal | None = None) -> LedgerEntry | None:
    """Make ``change`` and write its entry; None when ``cover`` is given and the balance
    is below it (nothing is written then). Call inside a transaction: the two statements
    must commit together. Raises Tenant.DoesNotExist for a tenant that is gone.

    A change that would take the balance below zero raises IntegrityError (the tenant
    table's CHECK constraint).
    """
    sql = f"UPDATE {_TENANT} SET credit_balance = credit_balance + %s WHERE id = %s"  # noqa: S608
    params: list = [change.amount, change.tenant_id]
    if cover is not None:
        sql += " AND credit_balance >= %s"
        params.append(cover)
    with connection.cursor() as cursor:
        cursor.execute(sql + " RETURNING credit_balance", params)
        row = cursor.fetchone()
    if row is None:
        if cover is None:
            raise Tenant.DoesNotExist(f"No tenant {change.tenant_id}.")
        return None
    return LedgerEntry.objects.create(
        tenant_id=change.tenant_id,
        kind=change.kind,
        amount=change.amount,
        balance_after=as_credits(row[0]),
        reference=change.reference,
        note=change.note,
    )
