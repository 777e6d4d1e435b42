"""The billing admin: balances, top-ups, the read-only ledger and holds, usage."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.credits import credits_reserve
from billing.models import LedgerEntry, Tenant
from billing.usage import usage_by_day, usage_chart
from chats.models import Message
from tests.factories import make_chat, make_tenant

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def tenants():
    return make_tenant(name="acme", credits=125), make_tenant(name="globex", credits=7)


def test_tenant_list_shows_balances(admin_client, tenants):
    html = admin_client.get(reverse("admin:billing_tenant_changelist")).content.decode()
    assert "125.000000" in html and "7.000000" in html
    assert reverse("admin:billing_tenant_usage") in html  # the Usage button


def test_tenant_change_page_still_works(admin_client, tenants):
    url = reverse("admin:billing_tenant_change", args=[tenants[0].pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert "response_cache_enabled" in response.content.decode()


def top_up(admin_client, tenants, **data):
    return admin_client.post(
        reverse("admin:billing_tenant_changelist"),
        {"action": "top_up", "_selected_action": [t.pk for t in tenants], **data},
    )


def test_top_up_action_asks_for_amount_and_note(admin_client, tenants):
    response = top_up(admin_client, tenants)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="amount"' in html and 'name="note"' in html
    assert "acme" in html and "globex" in html


def test_top_up_action_adds_credits_with_ledger_entries(admin_client, tenants, admin_user):
    response = top_up(admin_client, tenants, apply="Top up", amount="10.5", note="invoice 7")
    assert response.status_code == 302
    acme, globex = (Tenant.objects.get(pk=t.pk) for t in tenants)
    assert (acme.credit_balance, globex.credit_balance) == (D("135.5"), D("17.5"))
    entry = acme.ledger.filter(kind=LedgerEntry.Kind.TOP_UP).latest("id")
    assert entry.amount == D("10.5")
    assert entry.note == f"invoice 7 (by {admin_user.username})"


@pytest.mark.parametrize("amount", ["", "0", "-3", "abc", "1.0000001"])
def test_top_up_action_refuses_bad_amounts(admin_client, tenants, amount):
    response = top_up(admin_client, tenants[:1], apply="Top up", amount=amount)
    assert response.status_code == 200  # the form again, with its error
    assert "errorlist" in response.content.decode()
    assert Tenant.objects.get(pk=tenants[0].pk).credit_balance == D(125)


def test_ledger_is_read_only(admin_client, tenants):
    entry = tenants[0].ledger.get()
    assert admin_client.get(reverse("admin:billing_ledgerentry_changelist")).status_code == 200
    change_url = reverse("admin:billing_ledgerentry_change", args=[entry.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200  # viewable
    assert 'name="amount"' not in page.content.decode()  # but no form fields
    assert admin_client.get(reverse("admin:billing_ledgerentry_add")).status_code == 403
    assert admin_client.post(change_url, {"amount": "999", "note": "x"}).status_code == 403
    delete_url = reverse("admin:billing_ledgerentry_delete", args=[entry.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    bulk = admin_client.post(
        reverse("admin:billing_ledgerentry_changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    entry.refresh_from_db()
    assert entry.amount == D(125)


def test_holds_are_listed_read_only(admin_client, tenants):
    credits_reserve(tenant_id=tenants[0].pk, amount=D(5), reference="msg-42")
    html = admin_client.get(reverse("admin:billing_credithold_changelist")).content.decode()
    assert "msg-42" in html
    assert admin_client.get(reverse("admin:billing_credithold_add")).status_code == 403


def make_usage(tenant, *, model: str, days_ago: int, prompt: int, completion: int, count=1):
    chat = make_chat(tenant)
    when = timezone.now() - timedelta(days=days_ago)
    Message.objects.bulk_create(
        Message(
            chat=chat,
            role="assistant",
            model=model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            created_at=when,
        )
        for _ in range(count)
    )
    # A user message is not usage.
    Message.objects.create(chat=chat, role="user", content="hi", created_at=when)


@pytest.fixture
def usage(tenants):
    acme, globex = tenants
    make_usage(acme, model="demo/balanced", days_ago=0, prompt=100, completion=50, count=3)
    make_usage(acme, model="demo/cheap", days_ago=0, prompt=10, completion=5)
    make_usage(acme, model="demo/balanced", days_ago=2, prompt=1000, completion=1000)
    make_usage(globex, model="demo/frontier", days_ago=1, prompt=7, completion=3)
    make_usage(globex, model="demo/frontier", days_ago=45, prompt=7, completion=3)
    return tenants


def test_usage_selector_groups_per_day_tenant_and_model(usage):
    acme = usage[0]
    rows = usage_by_day(days=30)
    assert len(rows) == 4  # the 45-day-old message is outside the window
    today = [r for r in rows if r.tenant_id == acme.pk and r.day == timezone.localdate()]
    balanced = next(r for r in today if r.model == "demo/balanced")
    assert (balanced.requests, balanced.prompt_tokens, balanced.completion_tokens) == (3, 300, 150)
    assert balanced.credits == D("0.135")  # 300 * 0.15/1K + 150 * 0.60/1K
    assert {r.tenant_name for r in usage_by_day(tenant_id=acme.pk)} == {"acme"}
    assert len(usage_by_day(days=60)) == 5


def test_usage_chart_stacks_models_per_day(usage):
    rows = usage_by_day(days=7)
    chart = usage_chart(rows, days=7)
    assert len(chart.bars) == 7
    today = chart.bars[-1]
    assert today.total == 465  # 450 + 15
    assert [s["model"] for s in today.segments] == ["demo/balanced", "demo/cheap"]
    tallest = max(chart.bars, key=lambda bar: bar.total)
    assert tallest.total == chart.max_total == 2000
    assert sum(s["height"] for s in tallest.segments) == chart.height


def test_usage_page_renders_table_and_chart(admin_client, usage):
    response = admin_client.get(reverse("admin:billing_tenant_usage"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<svg" in html and "<rect" in html
    assert "demo/balanced" in html and "demo/frontier" in html
    assert "acme" in html and "globex" in html
    assert "cdn" not in html.lower()


def test_usage_page_filters_by_tenant_and_period(admin_client, usage):
    acme = usage[0]
    html = admin_client.get(
        reverse("admin:billing_tenant_usage"), {"tenant": acme.pk, "days": 7}
    ).content.decode()
    table = html[html.index('id="usage-table"') :]
    assert "acme" in table and "globex" not in table


def test_usage_page_copes_with_no_data_and_bad_parameters(admin_client, tenants):
    response = admin_client.get(
        reverse("admin:billing_tenant_usage"), {"tenant": "x", "days": "-4"}
    )
    assert response.status_code == 200
    assert "No usage." in response.content.decode()


def test_usage_page_needs_staff(client, usage):
    response = client.get(reverse("admin:billing_tenant_usage"))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
