"""Credit holds: reserve the most a request can cost before calling a provider, settle at
the real cost afterwards.

The balance never goes below zero: a hold is one conditional ``UPDATE … WHERE balance >=
amount RETURNING balance`` (atomic on PostgreSQL and SQLite alike), and the table's CHECK
constraint backs it up. Every change of a balance writes a ledger entry in the same
transaction, so the ledger's amounts always sum to the balance:

- reserve: ``hold`` entry of ``-amount``, and an open :class:`~billing.models.CreditHold`
  naming the model;
- settle:  ``settle`` entry of ``+(amount - charged)`` (the unused part comes back; the
  note says what was charged), and the hold is marked settled with the usage charged for
  (its tokens), which makes the closed holds the usage record;
- release: ``release`` entry of ``+amount`` (nothing used, nothing charged: a caller that
  left during admission, or the sweeper closing a hold nobody settled; the engine settles
  a request that failed before any output at 0 instead).

Closing a hold is claimed with a conditional UPDATE on its status, so a settle racing the
sweeper (or a second settle) closes it once. A hold is leased to the process serving its
request (:func:`holds_renew`); the sweeper closes only holds whose lease lapsed, and a
settle that finds its hold closed already charges nothing more: it reports what the
ledger took, which is what the client is told.
"""

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Generic, NoReturn, TypeVar, cast

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from billing.ledger import Change, as_credits, change_apply, change_sql
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.pricing import QUANTUM
from chatproject.errors import ApiError, ErrorCode

T = TypeVar("T")


@dataclass(frozen=True)
class Hold:
    tenant_id: int
    amount: Decimal
    reference: str
    balance_after: Decimal
    # The CreditHold row; None for a zero hold, which touches no row.
    hold_id: int | None = None


@dataclass(frozen=True)
class Settlement:
    charged: Decimal  # what the ledger took for the hold
    balance: Decimal  # the balance after


def lease_until(now=None):
    """When a lease taken or renewed now lapses."""
    return (now or timezone.now()) + timedelta(seconds=settings.HOLD_LEASE_SECONDS)


def _balance(tenant_id: int) -> Decimal:
    return Tenant.objects.values_list("credit_balance", flat=True).get(pk=tenant_id)


def credits_reserve(
    *,
    tenant_id: int,
    amount: Decimal,
    reference: str,
    model: str = "",
    message_id: uuid.UUID | None = None,
) -> Hold:
    """Hold ``amount`` of the tenant's credits for a request on ``model`` (whose stored
    answer will be ``message_id``), or raise INSUFFICIENT_CREDITS.

    The hold is leased for ``HOLD_LEASE_SECONDS``. A zero amount holds nothing and writes
    nothing (it still reports the balance).
    """
    amount = Decimal(amount).quantize(QUANTUM)
    if amount < 0:
        raise ValueError("A hold cannot be negative.")
    if amount == 0:
        return Hold(tenant_id, amount, reference, _balance(tenant_id))
    if connection.vendor == "postgresql":
        return credits_reserve_pending(
            tenant_id=tenant_id,
            amount=amount,
            reference=reference,
            model=model,
            message_id=message_id,
        ).result()
    # No savepoint (the engine calls this inside its own transaction) and no raising
    # inside the block: a refusal has changed nothing, so it leaves the block cleanly.
    with transaction.atomic(savepoint=False):
        entry = change_apply(_hold_change(tenant_id, amount, reference), cover=amount)
        if entry is not None:
            hold = CreditHold.objects.create(
                tenant_id=tenant_id,
                reference=reference,
                model=model,
                amount=amount,
                lease_expires_at=lease_until(),
                message_id=message_id,
            )
    if entry is None:
        _refuse(tenant_id, amount)
    return Hold(tenant_id, amount, reference, entry.balance_after, hold_id=hold.pk)


def _hold_change(tenant_id: int, amount: Decimal, reference: str) -> Change:
    return Change(tenant_id, LedgerEntry.Kind.HOLD, -amount, reference)


def _settle_change(hold: Hold, charged: Decimal) -> Change:
    """The unused part of the hold comes back; the note says what was charged."""
    note = f"charged {charged} of {hold.amount}"
    return Change(
        hold.tenant_id, LedgerEntry.Kind.SETTLE, hold.amount - charged, hold.reference, note
    )


def _refuse(tenant_id: int, amount: Decimal) -> NoReturn:
    raise insufficient_credits(amount, _balance(tenant_id))  # no tenant: DoesNotExist


def insufficient_credits(amount: Decimal, balance: Decimal) -> ApiError:
    return ApiError(
        ErrorCode.INSUFFICIENT_CREDITS,
        "The credit balance cannot cover this request.",
        details={"required": str(amount), "balance": str(as_credits(balance))},
    )


# --- PostgreSQL: each operation in one round trip ---------------------------------------
# The same writes as the portable code above, as data-modifying CTEs: the conditional
# balance update with its ledger entry (billing.ledger) feeds the hold's row, so nothing
# is written unless the update happened. Requests pay these on their hot path.

_HOLD = CreditHold._meta.db_table

# The CTEs of a hold: ``change`` and ``entry`` (the ledger), then ``hold`` (RETURNING id).
RESERVE_CTES = f"""{change_sql(cover=True)}, hold AS (
    INSERT INTO {_HOLD}
        (tenant_id, reference, model, amount, status, created_at, prompt_tokens, completion_tokens,
         lease_expires_at, message_id)
    SELECT %(tenant_id)s, %(reference)s, %(model)s, %(amount)s, %(open)s, %(now)s, 0, 0,
        %(lease)s, %(message_id)s
    FROM change
    RETURNING id
)"""  # noqa: S608 (only the models' own table names are formatted in)
_RESERVE_SQL = f"WITH {RESERVE_CTES} SELECT change.credit_balance, hold.id FROM change, hold"  # noqa: S608

# The CTEs of a settlement: ``claim`` (the hold closed, if it was open), then ``change``
# and ``entry``, written only if it was.
SETTLE_CTES = f"""claim AS (
    UPDATE {_HOLD} SET status = %(settled)s, charged = %(charged)s, closed_at = %(now)s,
        prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s
    WHERE id = %(hold_id)s AND status = %(open)s
    RETURNING id
), {change_sql(only_if="EXISTS (SELECT 1 FROM claim)")}"""  # noqa: S608 (the models' own tables)
_SETTLE_SQL = f"WITH {SETTLE_CTES} SELECT credit_balance FROM change"  # noqa: S608

# The statement's snapshot: the balance before its own change, and a hold's charge as it
# was closed before (see _settled_before), for a statement whose change did not happen.
BALANCE_BEFORE = f"(SELECT credit_balance FROM {Tenant._meta.db_table} WHERE id = %(tenant_id)s)"  # noqa: S608
CHARGED_BEFORE = f"(SELECT charged FROM {_HOLD} WHERE id = %(hold_id)s)"  # noqa: S608


class Pending(Generic[T]):
    """A billing write whose answer is read later: :meth:`result` is the answer, or raises
    the write's refusal. Inside :func:`chatproject.db.pipelined` the write then travels
    with the statements sent after it instead of costing a round trip of its own."""

    def __init__(
        self,
        *,
        cursor=None,
        read: Callable[[tuple | None], T] | None = None,
        value: T | None = None,
        refusal: ApiError | None = None,
    ) -> None:
        self._cursor, self._read = cursor, read
        self._value, self._refusal = value, refusal

    @classmethod
    def now(cls, compute: Callable[[], T]) -> "Pending[T]":
        """A write taken at once (not on PostgreSQL, or nothing to send)."""
        try:
            return cls(value=compute())
        except ApiError as refusal:
            return cls(refusal=refusal)

    def result(self) -> T:
        if self._cursor is not None:
            with self._cursor as cursor:
                row = cursor.fetchone()
            self._cursor = None
            read = self._read
            assert read is not None  # given with every cursor
            try:
                self._value = read(row)
            except ApiError as refusal:
                self._refusal = refusal
        if self._refusal is not None:
            raise self._refusal
        return cast(T, self._value)  # by now computed, or read from the cursor


def _send(sql: str, params: dict, read: Callable[[tuple | None], T]) -> Pending[T]:
    cursor = connection.cursor()
    cursor.execute(sql, params)
    return Pending(cursor=cursor, read=read)


def credits_reserve_pending(
    *,
    tenant_id: int,
    amount: Decimal,
    reference: str,
    model: str = "",
    message_id: uuid.UUID | None = None,
) -> Pending[Hold]:
    """:func:`credits_reserve`, its answer read later (see :class:`Pending`).

    On PostgreSQL the hold's one statement is sent now; elsewhere the hold is taken now.
    """
    amount = Decimal(amount).quantize(QUANTUM)
    if amount <= 0 or connection.vendor != "postgresql":
        return Pending.now(
            lambda: credits_reserve(
                tenant_id=tenant_id,
                amount=amount,
                reference=reference,
                model=model,
                message_id=message_id,
            )
        )

    def read(row: tuple | None) -> Hold:
        if row is None:
            _refuse(tenant_id, amount)
        return Hold(tenant_id, amount, reference, as_credits(row[0]), hold_id=row[1])

    statement = reserve_statement(
        tenant_id=tenant_id, amount=amount, reference=reference, model=model, message_id=message_id
    )
    return _send(*statement, read)


def reserve_statement(
    *, tenant_id: int, amount: Decimal, reference: str, model: str, message_id: uuid.UUID | None
) -> tuple[str, dict]:
    """The hold of a positive ``amount`` as one PostgreSQL statement, (sql, params): its
    row is (balance after, hold id), or none when the balance cannot cover it."""
    now = timezone.now()
    params = {
        **_hold_change(tenant_id, amount, reference).params(now=now, cover=amount),
        "amount": amount,
        "model": model,
        "open": CreditHold.Status.OPEN,
        "lease": lease_until(now),
        "message_id": message_id,
    }
    return _RESERVE_SQL, params


def credits_settle(
    *, hold: Hold, charged: Decimal, prompt_tokens: int = 0, completion_tokens: int = 0
) -> Decimal:
    """Close a hold at ``charged`` (capped at the hold; the rest goes back), recording the
    tokens it was charged for, and return the balance after.

    Settling a hold that is closed already (settled before, or closed by the sweeper once
    its lease lapsed) changes nothing: :func:`credits_settle_pending` says what the ledger
    took for it then.
    """
    return (
        credits_settle_pending(
            hold=hold,
            charged=charged,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        .result()
        .balance
    )


def credits_settle_pending(
    *, hold: Hold, charged: Decimal, prompt_tokens: int = 0, completion_tokens: int = 0
) -> Pending[Settlement]:
    """:func:`credits_settle`, its answer read later (see :class:`Pending`): what the
    ledger took for the hold (``charged``, or what the hold was closed at before) and the
    balance after.

    On PostgreSQL the settlement's one statement is sent now; elsewhere it is made now.
    """
    charged = capped_charge(hold, charged)
    tokens = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    if hold.hold_id is None:
        return Pending.now(lambda: Settlement(Decimal(0), _balance(hold.tenant_id)))
    if connection.vendor != "postgresql":
        return Pending.now(lambda: _settle_portably(hold=hold, charged=charged, **tokens))

    def read(row: tuple | None) -> Settlement:
        if row is not None:
            return Settlement(charged, as_credits(row[0]))
        return _settled_before(hold)

    return _send(*settle_statement(hold, charged, **tokens), read)


def capped_charge(hold: Hold, charged: Decimal) -> Decimal:
    """What settling ``hold`` can charge: ``charged``, within 0 and the hold."""
    return min(max(Decimal(charged), Decimal(0)), hold.amount).quantize(QUANTUM)


def settle_statement(
    hold: Hold, charged: Decimal, *, prompt_tokens: int, completion_tokens: int
) -> tuple[str, dict]:
    """Settling a hold with a row at ``charged`` (capped already) as one PostgreSQL
    statement, (sql, params): its row is the balance after, or none when the hold was
    closed before (then what the ledger took is the hold's ``charged``)."""
    params = {
        **_settle_change(hold, charged).params(),
        "hold_id": hold.hold_id,
        "charged": charged,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "open": CreditHold.Status.OPEN,
        "settled": CreditHold.Status.SETTLED,
    }
    return _SETTLE_SQL, params


def _settle_portably(
    *, hold: Hold, charged: Decimal, prompt_tokens: int, completion_tokens: int
) -> Settlement:
    tokens = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    assert hold.hold_id is not None  # a zero hold is settled without a row
    # No savepoint when the caller's transaction wraps this (the engine writes the
    # assistant message in the same one): nothing here is meant to fail and be caught.
    with transaction.atomic(savepoint=False):
        claimed = CreditHold.objects.filter(pk=hold.hold_id, status=CreditHold.Status.OPEN).update(
            status=CreditHold.Status.SETTLED, charged=charged, closed_at=timezone.now(), **tokens
        )
        if not claimed:
            return _settled_before(hold)
        entry = change_apply(_settle_change(hold, charged))
    return Settlement(charged, entry.balance_after)


def _settled_before(hold: Hold) -> Settlement:
    """What a hold closed before was charged, and the balance now. Charging it again
    would take credits other requests may have been admitted on (the sweeper closed it,
    its lease having lapsed), and the client would be told a charge the ledger has not."""
    assert hold.hold_id is not None  # only a hold with a row was closed before
    charged = CreditHold.objects.values_list("charged", flat=True).get(pk=hold.hold_id)
    return Settlement(as_credits(charged or 0), as_credits(_balance(hold.tenant_id)))


def credits_release(*, hold: Hold, note: str = "") -> Decimal:
    """Give a whole hold back (the request produced nothing billable). Returns the balance.

    Releasing a hold that is closed already changes nothing.
    """
    if hold.hold_id is not None:
        with transaction.atomic():
            balance = hold_release(hold_id=hold.hold_id, note=note)
        if balance is not None:
            return balance
    return _balance(hold.tenant_id)


def hold_release(*, hold_id: int, note: str = "") -> Decimal | None:
    """Release an open hold by id; None when it was closed already. Call in a transaction."""
    claimed = CreditHold.objects.filter(pk=hold_id, status=CreditHold.Status.OPEN).update(
        status=CreditHold.Status.RELEASED, charged=Decimal(0), closed_at=timezone.now()
    )
    if not claimed:
        return None
    tenant_id, amount, reference = CreditHold.objects.values_list(
        "tenant_id", "amount", "reference"
    ).get(pk=hold_id)
    change = Change(tenant_id, LedgerEntry.Kind.RELEASE, amount, reference, note)
    return change_apply(change).balance_after


def holds_renew(hold_ids: Iterable[int]) -> int:
    """Extend the leases of the open holds among ``hold_ids`` (one statement, whatever
    their number); returns how many were renewed."""
    ids = list(hold_ids)
    if not ids:
        return 0
    return CreditHold.objects.filter(pk__in=ids, status=CreditHold.Status.OPEN).update(
        lease_expires_at=lease_until()
    )


def hold_checkpoint(*, hold_id: int, prompt_tokens: int, completion_tokens: int) -> None:
    """Record on an open hold how much its (stateless) request has generated so far: what
    the sweeper settles it at if the process serving it dies."""
    CreditHold.objects.filter(pk=hold_id, status=CreditHold.Status.OPEN).update(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


def hold_rename_model(*, hold_id: int, model: str) -> None:
    """Name on a hold the model that uses it, when another than the one it was reserved
    for answers (a fallback): the sweeper prices a stale hold, and usage by model counts
    it, by that model."""
    CreditHold.objects.filter(pk=hold_id).update(model=model)
