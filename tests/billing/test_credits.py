"""Credit holds and the ledger: reserve, settle, release, top-up, pricing."""

import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing.credits import (
    Hold,
    credits_release,
    credits_reserve,
    credits_reserve_pending,
    credits_settle,
    credits_settle_pending,
)
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.pricing import cost
from billing.services import credits_top_up
from chatproject.db import pipelined
from chatproject.errors import ApiError, ErrorCode
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

D = Decimal


def balance(tenant: Tenant) -> Decimal:
    return Tenant.objects.get(pk=tenant.pk).credit_balance


def ledger_sum(tenant: Tenant) -> Decimal:
    # Summed here: SQLite's SUM() works in floating point.
    return sum(LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True), D(0))


def assert_books_balance(tenant: Tenant) -> None:
    assert ledger_sum(tenant) == balance(tenant)
    assert balance(tenant) >= 0
    last = LedgerEntry.objects.filter(tenant=tenant).order_by("-id").first()
    if last is not None:
        assert last.balance_after == balance(tenant)


@pytest.fixture
def funded():
    return make_tenant(credits=10)


# --- reserve --------------------------------------------------------------------------


def test_reserve_holds_credits_and_records_it(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D("2.5"), reference="msg-1")
    assert hold == Hold(funded.pk, D("2.5"), "msg-1", D("7.5"), hold_id=hold.hold_id)
    assert balance(funded) == D("7.5")
    entry = funded.ledger.get(kind=LedgerEntry.Kind.HOLD)
    assert (entry.amount, entry.balance_after, entry.reference) == (D("-2.5"), D("7.5"), "msg-1")
    stored = CreditHold.objects.get(pk=hold.hold_id)
    assert (stored.status, stored.amount, stored.reference) == ("open", D("2.5"), "msg-1")
    assert_books_balance(funded)


def test_reserve_of_the_whole_balance_leaves_zero(funded):
    assert credits_reserve(tenant_id=funded.pk, amount=D(10), reference="r").balance_after == 0
    assert_books_balance(funded)


def test_insufficient_credits_leave_everything_untouched(funded):
    entries = funded.ledger.count()
    with pytest.raises(ApiError) as raised:
        credits_reserve(tenant_id=funded.pk, amount=D("10.000001"), reference="r")
    error = raised.value
    assert (error.code, error.status, error.retryable) == (
        ErrorCode.INSUFFICIENT_CREDITS,
        402,
        False,
    )
    assert error.details == {"required": "10.000001", "balance": "10.000000"}
    assert balance(funded) == 10
    assert funded.ledger.count() == entries
    assert not CreditHold.objects.exists()


def test_a_zero_hold_writes_nothing(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(0), reference="free")
    assert (hold.hold_id, hold.balance_after) == (None, D(10))
    assert credits_settle(hold=hold, charged=D(1)) == D(10)
    assert funded.ledger.count() == 1  # the initial top-up
    assert not CreditHold.objects.exists()


def test_a_negative_hold_is_refused(funded):
    with pytest.raises(ValueError):
        credits_reserve(tenant_id=funded.pk, amount=D(-1), reference="r")


def test_reserve_for_a_missing_tenant_raises(db):
    with pytest.raises(Tenant.DoesNotExist):
        credits_reserve(tenant_id=987654, amount=D(1), reference="r")


# --- settle and release ---------------------------------------------------------------


def test_settle_charges_and_returns_the_rest(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(4), reference="msg-1")
    assert credits_settle(hold=hold, charged=D("1.25")) == D("8.75")
    entry = funded.ledger.get(kind=LedgerEntry.Kind.SETTLE)
    assert (entry.amount, entry.balance_after, entry.note) == (
        D("2.75"),
        D("8.75"),
        "charged 1.250000 of 4.000000",
    )
    stored = CreditHold.objects.get(pk=hold.hold_id)
    assert (stored.status, stored.charged) == ("settled", D("1.25"))
    assert stored.closed_at is not None
    assert_books_balance(funded)


def test_charge_is_capped_at_the_hold(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(3), reference="r")
    assert credits_settle(hold=hold, charged=D(50)) == D(7)
    assert CreditHold.objects.get(pk=hold.hold_id).charged == D(3)
    assert_books_balance(funded)


def test_settling_twice_changes_nothing(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(3), reference="r")
    credits_settle(hold=hold, charged=D(1))
    entries = funded.ledger.count()
    assert credits_settle(hold=hold, charged=D(0)) == D(9)
    assert funded.ledger.count() == entries
    assert_books_balance(funded)


def test_release_returns_the_whole_hold(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(3), reference="r")
    assert credits_release(hold=hold, note="upstream refused") == D(10)
    entry = funded.ledger.get(kind=LedgerEntry.Kind.RELEASE)
    assert (entry.amount, entry.note) == (D(3), "upstream refused")
    assert CreditHold.objects.get(pk=hold.hold_id).status == "released"
    assert credits_release(hold=hold) == D(10)  # again: nothing
    assert_books_balance(funded)


def test_settle_after_release_charges_nothing_and_says_so(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(6), reference="slow")
    credits_release(hold=hold)
    other = credits_reserve(tenant_id=funded.pk, amount=D(8), reference="other")
    assert other.balance_after == D(2)
    # The slow request finally ends having used 5: its hold is gone, so is the charge,
    # and the settlement reports what the ledger really took.
    settled = credits_settle_pending(hold=hold, charged=D(5)).result()
    assert (settled.charged, settled.balance) == (0, D(2))
    assert not funded.ledger.filter(reference="slow", kind=LedgerEntry.Kind.SETTLE).exists()
    assert CreditHold.objects.get(pk=hold.hold_id).status == "released"
    assert_books_balance(funded)


def test_settling_twice_reports_the_first_charge(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(6), reference="twice")
    first = credits_settle_pending(hold=hold, charged=D(2)).result()
    again = credits_settle_pending(hold=hold, charged=D(5)).result()
    assert (first.charged, again.charged) == (D(2), D(2))
    assert first.balance == again.balance == D(8)
    assert_books_balance(funded)


def test_holds_of_many_requests_add_up(funded):
    holds = [credits_reserve(tenant_id=funded.pk, amount=D(2), reference=f"r{i}") for i in range(5)]
    assert balance(funded) == 0
    for hold in holds:
        credits_settle(hold=hold, charged=D("0.5"))
    assert balance(funded) == D("7.5")
    assert_books_balance(funded)


# --- the usage record: model and tokens on the hold ------------------------------------
# SQLite runs the portable ORM code, PostgreSQL the single statements.


def stored(hold: Hold) -> tuple:
    row = CreditHold.objects.get(pk=hold.hold_id)
    return row.status, row.model, row.charged, row.prompt_tokens, row.completion_tokens


def test_reserve_records_the_model(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(2), reference="r", model="demo/cheap")
    assert stored(hold) == ("open", "demo/cheap", None, 0, 0)
    unnamed = credits_reserve(tenant_id=funded.pk, amount=D(2), reference="r")
    assert stored(unnamed)[1] == ""


def test_settle_records_the_tokens(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(2), reference="r", model="demo/cheap")
    credits_settle(hold=hold, charged=D("0.5"), prompt_tokens=12, completion_tokens=34)
    assert stored(hold) == ("settled", "demo/cheap", D("0.5"), 12, 34)
    assert_books_balance(funded)


def test_a_second_settle_keeps_the_first_tokens(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(2), reference="r", model="m")
    credits_settle(hold=hold, charged=D(1), prompt_tokens=5, completion_tokens=6)
    credits_settle(hold=hold, charged=D(2), prompt_tokens=50, completion_tokens=60)
    assert stored(hold) == ("settled", "m", D(1), 5, 6)


def test_a_release_records_no_tokens(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(2), reference="r", model="m")
    credits_release(hold=hold)
    assert stored(hold) == ("released", "m", D(0), 0, 0)


def test_a_late_settle_leaves_a_released_hold_as_it_was(funded):
    hold = credits_reserve(tenant_id=funded.pk, amount=D(6), reference="slow", model="m")
    credits_release(hold=hold)  # as the sweeper does
    credits_settle(hold=hold, charged=D(5), prompt_tokens=70, completion_tokens=80)
    assert stored(hold) == ("released", "m", D(0), 0, 0)
    assert_books_balance(funded)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the single statements are PostgreSQL's"
)
def test_reserve_and_settle_stay_one_statement_each(funded, django_assert_num_queries):
    with django_assert_num_queries(1):
        hold = credits_reserve(tenant_id=funded.pk, amount=D(2), reference="r", model="m")
    with django_assert_num_queries(1):
        credits_settle(hold=hold, charged=D(1), prompt_tokens=3, completion_tokens=4)
    assert stored(hold) == ("settled", "m", D(1), 3, 4)


# --- a hold read back later, sent along with other writes -----------------------------


def test_a_pending_hold_reads_back_the_hold_after_other_writes(funded):
    other = make_tenant()
    with pipelined():
        pending = credits_reserve_pending(
            tenant_id=funded.pk, amount=D(3), reference="p", model="m"
        )
        Tenant.objects.filter(pk=other.pk).update(name="renamed")  # sent after the hold
    hold = pending.result()
    assert hold == Hold(funded.pk, D(3), "p", D(7), hold_id=hold.hold_id)
    assert pending.result() == hold  # read once, kept
    assert stored(hold) == ("open", "m", None, 0, 0)
    assert Tenant.objects.get(pk=other.pk).name == "renamed"
    assert_books_balance(funded)


def test_a_refused_pending_hold_raises_when_read_and_writes_nothing(funded):
    with pipelined():
        pending = credits_reserve_pending(tenant_id=funded.pk, amount=D(11), reference="p")
    for _ in range(2):
        with pytest.raises(ApiError) as raised:
            pending.result()
        assert raised.value.code == ErrorCode.INSUFFICIENT_CREDITS
    assert raised.value.details == {"required": "11.000000", "balance": "10.000000"}
    assert balance(funded) == 10
    assert not CreditHold.objects.filter(tenant=funded).exists()
    assert_books_balance(funded)


def test_a_pending_zero_hold_writes_nothing(funded):
    hold = credits_reserve_pending(tenant_id=funded.pk, amount=D(0), reference="p").result()
    assert (hold.hold_id, hold.balance_after) == (None, D(10))
    assert not CreditHold.objects.filter(tenant=funded).exists()


# --- the invariant, over random histories ---------------------------------------------

amounts = st.decimals(min_value=D("0.000001"), max_value=D(50), places=6)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("top_up"), amounts),
        st.tuples(st.just("reserve"), amounts),
        st.tuples(st.just("settle"), st.decimals(min_value=0, max_value=D(60), places=6)),
        st.tuples(st.just("release"), st.just(D(0))),
    ),
    max_size=25,
)


@given(operations=operations)
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_ledger_always_sums_to_the_balance(operations):
    tenant = make_tenant()
    open_holds: list[Hold] = []
    expected = D(0)
    for op, amount in operations:
        if op == "top_up":
            credits_top_up(tenant=tenant, amount=amount)
            expected += amount
        elif op == "reserve":
            try:
                hold = credits_reserve(tenant_id=tenant.pk, amount=amount, reference="h")
                open_holds.append(hold)
                expected -= amount
            except ApiError as error:
                assert error.code == ErrorCode.INSUFFICIENT_CREDITS
                assert amount > expected
        elif open_holds:
            hold = open_holds.pop(0)
            if op == "settle":
                credits_settle(hold=hold, charged=amount)
                expected += hold.amount - min(amount, hold.amount)
            else:
                credits_release(hold=hold)
                expected += hold.amount
        assert balance(tenant) == expected
        assert_books_balance(tenant)


# --- top-up command and pricing -------------------------------------------------------


def test_top_up_command_adds_credits_with_a_ledger_entry(funded):
    out = io.StringIO()
    call_command("top_up", funded.name, "5.5", "--note", "invoice 42", stdout=out)
    assert "balance 15.5" in out.getvalue()
    entry = funded.ledger.filter(kind=LedgerEntry.Kind.TOP_UP).latest("id")
    assert (entry.amount, entry.note) == (D("5.5"), "invoice 42")
    assert_books_balance(funded)


@pytest.mark.parametrize("args", [("nobody", "5"), ("T", "-1"), ("T", "abc"), ("T", "0.0000001")])
def test_top_up_command_refuses_bad_input(funded, args):
    name, amount = args
    with pytest.raises(CommandError):
        call_command("top_up", funded.name if name == "T" else name, amount, stdout=io.StringIO())
    assert balance(funded) == 10


def test_cost_rounds_up_to_the_ledger_precision():
    assert cost(
        input_price_per_1k=D("0.15"),
        output_price_per_1k=D("0.60"),
        prompt_tokens=1000,
        completion_tokens=500,
    ) == D("0.45")
    assert cost(
        input_price_per_1k=D("0.001"),
        output_price_per_1k=D(0),
        prompt_tokens=1,
        completion_tokens=0,
    ) == D("0.000001")


def test_cost_refuses_negative_tokens():
    with pytest.raises(ValueError):
        cost(
            input_price_per_1k=D(1), output_price_per_1k=D(1), prompt_tokens=-1, completion_tokens=0
        )
