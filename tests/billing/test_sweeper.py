"""The stale-hold sweeper and its management command."""

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.credits import credits_reserve, credits_settle
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.sweeper import holds_release_stale
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db

D = Decimal


def age(hold, seconds: float) -> None:
    CreditHold.objects.filter(pk=hold.hold_id).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
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
    assert holds_release_stale() == 1
    statuses = dict(CreditHold.objects.values_list("reference", "status"))
    assert statuses == {"stale": "released", "fresh": "open", "settled": "settled"}
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(75)
    entry = tenant.ledger.get(kind=LedgerEntry.Kind.RELEASE)
    assert (entry.amount, entry.reference) == (D(10), "stale")
    assert "stale" in entry.note
    assert books_balance(tenant)


def test_running_the_sweeper_twice_is_harmless(tenant_with_holds):
    tenant = tenant_with_holds[0]
    holds_release_stale()
    entries = tenant.ledger.count()
    assert holds_release_stale() == 0
    assert tenant.ledger.count() == entries
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(75)
    assert books_balance(tenant)


def test_the_age_is_configurable(tenant_with_holds):
    tenant = tenant_with_holds[0]
    assert holds_release_stale(older_than_seconds=0) == 2  # stale and fresh
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(95)
    assert books_balance(tenant)


def test_a_request_settling_after_the_sweep_is_charged_once(tenant_with_holds):
    tenant, stale, *_ = tenant_with_holds
    holds_release_stale()
    assert credits_settle(hold=stale, charged=D(4)) == D(71)
    assert credits_settle(hold=stale, charged=D(4)) == D(71)  # and only once
    assert CreditHold.objects.get(pk=stale.hold_id).charged == D(4)
    assert books_balance(tenant)


def test_sweeper_works_in_batches(settings, monkeypatch):
    monkeypatch.setattr("billing.sweeper.BATCH_SIZE", 3)
    tenant = make_tenant(credits=100)
    holds = [credits_reserve(tenant_id=tenant.pk, amount=D(1), reference=f"r{i}") for i in range(8)]
    for hold in holds:
        age(hold, 10_000)
    assert holds_release_stale() == 8
    assert Tenant.objects.get(pk=tenant.pk).credit_balance == D(100)
    assert books_balance(tenant)


def test_command_reports_what_it_released(tenant_with_holds):
    out = io.StringIO()
    call_command("release_stale_holds", stdout=out)
    assert out.getvalue().strip() == "Released 1 stale hold(s)."
    out = io.StringIO()
    call_command("release_stale_holds", "--older-than", "0", stdout=out)
    assert out.getvalue().strip() == "Released 1 stale hold(s)."


def test_command_refuses_a_negative_age(db):
    with pytest.raises(CommandError):
        call_command("release_stale_holds", "--older-than", "-1", stdout=io.StringIO())
