"""The billing admin: balances, top-ups, the read-only ledger and holds, and the usage
report built from the settled credit holds."""

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse
from django.utils import timezone

from billing.credits import credits_release, credits_reserve, credits_settle
from billing.models import CreditHold, LedgerEntry, Tenant
from billing.usage import usage_by_day, usage_chart
from chats.engine import FinishedEvent, Generation, GenerationRequest, start_generation
from chats.models import LLMModel, Message
from tests.factories import make_chat, make_key, make_tenant

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
    credits_reserve(tenant_id=tenants[0].pk, amount=D(5), reference="msg-42", model="demo/cheap")
    html = admin_client.get(reverse("admin:billing_credithold_changelist")).content.decode()
    assert "msg-42" in html and "demo/cheap" in html
    assert admin_client.get(reverse("admin:billing_credithold_add")).status_code == 403


def make_usage(
    tenant, *, model: str, days_ago: int, prompt: int, completion: int, charged="0.01", count=1
):
    """``count`` billed requests: holds taken and settled as the engine does, closed
    ``days_ago`` days ago."""
    for _ in range(count):
        hold = credits_reserve(tenant_id=tenant.pk, amount=D(1), reference="r", model=model)
        credits_settle(
            hold=hold, charged=D(charged), prompt_tokens=prompt, completion_tokens=completion
        )
        CreditHold.objects.filter(pk=hold.hold_id).update(
            closed_at=timezone.now() - timedelta(days=days_ago)
        )


@pytest.fixture
def usage(tenants):
    acme, globex = tenants
    make_usage(
        acme, model="demo/balanced", days_ago=0, prompt=100, completion=50, charged="0.045", count=3
    )
    make_usage(acme, model="demo/cheap", days_ago=0, prompt=10, completion=5)
    make_usage(acme, model="demo/balanced", days_ago=2, prompt=1000, completion=1000)
    make_usage(globex, model="demo/frontier", days_ago=1, prompt=7, completion=3)
    make_usage(globex, model="demo/frontier", days_ago=45, prompt=7, completion=3)
    return tenants


def test_usage_selector_groups_per_day_tenant_and_model(usage):
    acme = usage[0]
    rows = usage_by_day(days=30)
    assert len(rows) == 4  # the 45-day-old request is outside the window
    today = [r for r in rows if r.tenant_id == acme.pk and r.day == timezone.localdate()]
    assert [r.model for r in today] == ["demo/balanced", "demo/cheap"]
    balanced = today[0]
    assert (balanced.requests, balanced.prompt_tokens, balanced.completion_tokens) == (3, 300, 150)
    assert balanced.credits == D("0.135")
    assert [r.day for r in rows] == sorted(r.day for r in rows)
    assert {r.tenant_name for r in usage_by_day(tenant_id=acme.pk)} == {"acme"}
    assert len(usage_by_day(days=60)) == 5


def test_usage_credits_are_what_was_charged_not_current_prices(tenants):
    make_usage(tenants[0], model="demo/balanced", days_ago=0, prompt=100, completion=50)
    LLMModel.objects.filter(name="demo/balanced").update(
        input_price_per_1k=D(100), output_price_per_1k=D(100)
    )
    [row] = usage_by_day()
    assert row.credits == D("0.01")


def test_usage_counts_settled_holds_only(tenants):
    acme = tenants[0]
    released = credits_reserve(tenant_id=acme.pk, amount=D(1), reference="gone", model="m")
    credits_release(hold=released)  # nothing used, nothing charged: not a request
    credits_reserve(tenant_id=acme.pk, amount=D(1), reference="running", model="m")
    assert usage_by_day() == []
    # Failed before any token: settled at nothing, and still a request.
    make_usage(acme, model="m", days_ago=0, prompt=0, completion=0, charged="0")
    [row] = usage_by_day()
    assert (row.requests, row.total_tokens, row.credits) == (1, 0, D(0))


def test_holds_from_before_the_model_was_recorded_show_as_unknown(tenants):
    hold = credits_reserve(tenant_id=tenants[0].pk, amount=D(1), reference="old")
    credits_settle(hold=hold, charged=D("0.2"))
    [row] = usage_by_day()
    assert (row.model, row.credits) == ("(unknown)", D("0.2"))


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


# --- the report over real requests ------------------------------------------------------


async def generate(tenant, *, chat=None) -> tuple[Generation, FinishedEvent]:
    """One request through the engine, answered by the model (not the response cache)."""
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant,
            chat=chat,
            quality="cheap",
            messages=[{"role": "user", "content": f"one two #{uuid.uuid4().hex[:8]}"}],
            use_cache=False,
        )
    )
    events = [event async for event in generation.events()]
    assert isinstance(events[-1], FinishedEvent)
    return generation, events[-1]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_request_settles_its_hold_with_the_model_and_reported_usage():
    tenant = await sync_to_async(make_tenant)(credits=100)
    generation, finished = await generate(tenant)
    hold = await CreditHold.objects.aget(reference=generation.request.request_id)
    assert (hold.status, hold.model) == ("settled", generation.model_name)
    assert (hold.prompt_tokens, hold.completion_tokens) == (
        finished.usage.prompt_tokens,
        finished.usage.completion_tokens,
    )
    assert hold.completion_tokens > 0
    assert hold.charged == finished.credits_charged


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_usage_counts_stateless_requests_and_survives_chat_deletion():
    tenant = await sync_to_async(make_tenant)(credits=100)
    chat = await sync_to_async(make_chat)(tenant)
    _, in_chat = await generate(tenant, chat=chat)
    _, stateless = await generate(tenant)  # stores no message at all
    messages = Message.objects.filter(chat_id=chat.pk)
    assert await messages.acount() == 2  # the chat's question and answer
    await chat.adelete()
    assert not await messages.aexists()
    [row] = await sync_to_async(usage_by_day)()
    assert (row.tenant_id, row.requests) == (tenant.pk, 2)
    assert row.prompt_tokens == in_chat.usage.prompt_tokens + stateless.usage.prompt_tokens
    assert row.completion_tokens == (
        in_chat.usage.completion_tokens + stateless.usage.completion_tokens
    )
    assert row.credits == in_chat.credits_charged + stateless.credits_charged


def test_openai_compatible_request_is_in_the_report(server):
    tenant = make_tenant(name="stateless", credits=100)
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": "demo/cheap",
            "messages": [{"role": "user", "content": f"hello #{uuid.uuid4().hex[:8]}"}],
        },
        headers={"X-API-Key": make_key(tenant)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    hold = CreditHold.objects.get(reference=response.headers["x-request-id"])
    assert (hold.status, hold.model) == ("settled", "demo/cheap")
    assert (hold.prompt_tokens, hold.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    [row] = usage_by_day(tenant_id=tenant.pk)
    assert (row.model, row.requests, row.total_tokens) == ("demo/cheap", 1, usage["total_tokens"])
    assert row.credits == hold.charged > 0


def test_usage_page_renders_table_and_chart(admin_client, usage):
    response = admin_client.get(reverse("admin:billing_tenant_usage"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<svg" in html and "<rect" in html
    assert "demo/balanced" in html and "demo/frontier" in html
    assert "acme" in html and "globex" in html
    assert "Credits charged" in html and "0.135000" in html
    # Drawn by this server: no script, style or image from another host.
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)


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
