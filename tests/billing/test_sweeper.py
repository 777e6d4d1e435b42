"""The stale-hold sweeper and its management command."""

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.credits import (
    credits_reserve,
    credits_settle,
    credits_settle_pending,
    hold_checkpoint,
    holds_renew,
)
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.sweeper import holds_sweep
from chats.models import LLMModel
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

D = Decimal


def age(hold, seconds: float) -> None:
    """As if the process serving ``hold`` stopped renewing its lease ``seconds`` ago."""
    CreditHold.objects.filter(pk=hold.hold_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=seconds)
    )


def books_balance(tenant: Tenant) -> bool:
    total = sum(LedgerEntry.objects.filter(tenant=tenant).values_list("amount", flat=True))
    return total == Tenant.objects.get(pk=tenant.pk).credit_balance


@pytest.fixture
def tenant_with_holds(settings):
    settings.HOLD_STALE_AFTER_SECONDS = 900
    tenant = make_tenant(credits=100)
    stale = credits_reserve(tenant_id=tenant.pk, amount=D(10), reference="stale")
    fresh = credits_reserve(tenant_id=tenant.pk, amount=D(20), reference="fresh")
    settled = credits_reserve(tenant_id=tenant.pk, amount=D(30), reference="settled")
    credits_settle(hold=settled, charged=D(5))
    age(stale, 901)
    age(settled, 5000)
    age(fresh, 899)
    return tenant, stale, fresh, settled


def test_sweeper_releases_a_stale_hold_only(tenant_with_holds):
    tenant = tenant_with_holds[0]
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(65)
    assert holds_sweep().closed == 1
    statuses = dict(CreditHold.objects.values_list("reference", "status"))
    assert statuses == {"stale": "released", "fresh": "open", "settled": "settled"}
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(75)
    entry = tenant.ledger.get(kind=LedgerEntry.Kind.RELEASE)
    assert (entry.amount, entry.reference) == (D(10), "stale")
    assert "stale" in entry.note
    assert books_balance(tenant)


def test_running_the_sweeper_twice_is_harmless(tenant_with_holds):
    tenant = tenant_with_holds[0]
    holds_sweep()
    entries = tenant.ledger.count()
    assert holds_sweep().closed == 0
    assert tenant.ledger.count() == entries
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(75)
    assert books_balance(tenant)


def test_the_age_is_configurable(tenant_with_holds):
    tenant = tenant_with_holds[0]
    assert holds_sweep(older_than_seconds=0).closed == 2  # stale and fresh
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(95)
    assert books_balance(tenant)


def test_a_request_settling_after_the_sweep_is_not_charged_and_told_so(tenant_with_holds):
    tenant, stale, *_ = tenant_with_holds
    holds_sweep()
    settled = credits_settle_pending(hold=stale, charged=D(4)).result()
    assert (settled.charged, settled.balance) == (0, D(75))
    assert CreditHold.objects.get(pk=stale.hold_id).charged == 0
    assert books_balance(tenant)


def test_a_new_hold_is_leased_and_renewing_keeps_it_from_the_sweeper(settings):
    settings.HOLD_LEASE_SECONDS = 30
    tenant = make_tenant(credits=100)
    hold = credits_reserve(tenant_id=tenant.pk, amount=D(10), reference="live")
    lease = CreditHold.objects.get(pk=hold.hold_id).lease_expires_at
    assert timezone.now() + timedelta(seconds=25) < lease
    assert holds_sweep(older_than_seconds=0).closed == 0  # its lease runs
    age(hold, 5)  # the process missed its renewals...
    assert holds_renew([hold.hold_id]) == 1  # ...then renewed after all
    assert holds_sweep(older_than_seconds=0).closed == 0
    age(hold, 5)  # it died: nothing renews it
    assert holds_sweep(older_than_seconds=1).closed == 1
    assert CreditHold.objects.get(pk=hold.hold_id).status == "released"
    assert holds_renew([hold.hold_id]) == 0  # a closed hold is not renewed
    assert books_balance(tenant)


def test_a_stateless_hold_with_checkpointed_tokens_is_settled_for_them(settings):
    LLMModel.objects.create(
        name="priced",
        provider="demo",
        upstream_model="demo",
        input_price_per_1k=D(1),
        output_price_per_1k=D(10),
    )
    tenant = make_tenant(credits=100)
    hold = credits_reserve(tenant_id=tenant.pk, amount=D(20), reference="cut", model="priced")
    hold_checkpoint(hold_id=hold.hold_id, prompt_tokens=100, completion_tokens=500)
    age(hold, 120)
    sweep = holds_sweep()
    assert (sweep.released, sweep.settled) == (0, 1)
    row = CreditHold.objects.get(pk=hold.hold_id)
    assert (row.status, row.charged, row.prompt_tokens, row.completion_tokens) == (
        "settled",
        D("5.1"),
        100,
        500,
    )
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D("94.9")
    assert books_balance(tenant)


def test_sweeper_works_in_batches(settings, monkeypatch):
    monkeypatch.setattr("billing.sweeper.BATCH_SIZE", 3)
    tenant = make_tenant(credits=100)
    holds = [credits_reserve(tenant_id=tenant.pk, amount=D(1), reference=f"r{i}") for i in range(8)]
    for hold in holds:
        age(hold, 10_000)
    assert holds_sweep().closed == 8
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(100)
    assert books_balance(tenant)


def test_command_reports_what_it_released(tenant_with_holds):
    out = io.StringIO()
    done = "stale hold(s); settled 0 for their checkpointed answers."
    call_command("release_stale_holds", stdout=out)
    assert out.getvalue().strip() == f"Released 1 {done}"
    out = io.StringIO()
    call_command("release_stale_holds", "--older-than", "0", stdout=out)
    assert out.getvalue().strip() == f"Released 1 {done}"


def test_command_refuses_a_negative_age(db):
    with pytest.raises(CommandError):
        call_command("release_stale_holds", "--older-than", "-1", stdout=io.StringIO())
