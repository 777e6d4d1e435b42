"""The staff admin: an overview as its index, audit lists led by what staff look for, a
"needs review" filter and tenant pages; each page checked in a real Chromium at 1400x900."""

import json
import os
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from chatproject.overview import bar_chart, needs_review
from governor.models import AuditRecord
from tests.chromium import run_script
from tests.factories import make_key, make_tenant

SUSPENSION = {"actionType": "suspension", "senderId": "agent-7", "recipientCountry": "US"}
SECRET = "my key is sk_live_a1B2c3D4e5F6g7H8i9J0kL"


def chat(server, key: str, content: str, **extra) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/ai/chat/complete",
        json={"messages": [{"role": "user", "content": content}], **extra},
        headers={"X-API-Key": key},
        timeout=30,
    )


@pytest.fixture
def traffic(server):
    """Two tenants with billed answers (one stored in a chat), a request flagged for review,
    one refused."""
    acme, globex = make_tenant(name="acme", credits=1000), make_tenant(name="globex", credits=50)
    acme_key, globex_key = make_key(acme), make_key(globex)
    for n in range(3):
        assert chat(server, acme_key, f"Hello {n} [demo:tokens=40]").status_code == 200
    assert chat(server, globex_key, "Hello from globex").status_code == 200
    stored = httpx.post(
        f"{server.url}/api/chat",
        json={"prompt": "Hello from a stored chat"},
        headers={"X-API-Key": acme_key},
        timeout=30,
    )
    assert stored.status_code == 200 and '"finish"' in stored.text
    flagged = chat(server, acme_key, "Suspend account 42 for abuse.", governorMetadata=SUSPENSION)
    assert flagged.status_code == 200, flagged.text
    assert chat(server, acme_key, SECRET).status_code == 403
    return acme, globex


# --- in process ------------------------------------------------------------------------


def test_bar_chart_scales_bars_to_the_peak():
    chart = bar_chart([("a", 0), ("b", 5), ("c", 10)], width=300, height=100)
    assert [bar.height for bar in chart.bars] == [0, 50, 100]
    assert [bar.y for bar in chart.bars] == [100, 50, 0]
    assert chart.bars[1].x > chart.bars[0].x and chart.bar_width < 100
    assert bar_chart([], width=300).bars == []


@pytest.mark.django_db(transaction=True)
def test_the_review_queue_holds_flagged_unreviewed_and_escalated_records(traffic, admin_user):
    flagged = AuditRecord.objects.get(decision="review")
    assert list(AuditRecord.objects.filter(needs_review())) == [flagged]

    from governor import services

    services.audit_record_review(record=flagged, reviewer=admin_user, decision="approved", note="")
    assert not AuditRecord.objects.filter(needs_review()).exists()
    services.audit_record_review(record=flagged, reviewer=admin_user, decision="escalated", note="")
    assert AuditRecord.objects.filter(needs_review()).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_index_is_the_overview(traffic, admin_client):
    response = admin_client.get(reverse("admin:index"))
    overview = response.context["overview"]
    assert [row.name for row in overview.top_tenants] == ["acme", "globex"]
    assert overview.totals.requests == 6  # five answers and the flagged one; not the refusal
    assert overview.totals.credits > 0 and overview.totals.tokens > 0
    assert overview.review_count == 1
    levels = {row.level: row for row in overview.decisions}
    assert levels["critical"].rejected == 1
    assert sum(row.total for row in overview.decisions) == 7
    html = response.content.decode()
    assert "AI chat backend" in html and "Django administration" not in html
    assert "?needs_review=yes" in html


@pytest.mark.django_db(transaction=True)
def test_the_needs_review_filter_lists_only_the_queue(traffic, admin_client):
    url = reverse("admin:governor_auditrecord_changelist")
    flagged = admin_client.get(url, {"needs_review": "yes"}).context["cl"].result_list
    assert [record.decision for record in flagged] == ["review"]
    rest = admin_client.get(url, {"needs_review": "no"}).context["cl"].result_list
    assert len(rest) == 6 and all(record.decision != "review" for record in rest)


# --- in Chromium -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_each_admin_page_reads_well_in_chromium(server, traffic):
    acme, _ = traffic
    get_user_model().objects.create_superuser("staff", "staff@example.com", "staff-password-1")
    key_prefix = acme.api_keys.first().prefix
    flagged = AuditRecord.objects.get(decision="review")
    pages = [
        {
            "name": "overview",
            "path": "/admin/",
            "expect": [
                "AI chat backend",
                "Overview",
                "Review queue",
                "Top tenants",
                "acme",
                "globex",
                "Governor decisions by risk level",
                "Errors by code",
                "GOVERNOR_REJECTED",
                "Requests",
                "Credits charged",
            ],
        },
        {
            "name": "audit-records",
            "path": "/admin/governor/auditrecord/",
            "expect": ["TENANT", "ACTION TYPE", "RISK", "DECISION", "VIOLATIONS", "secret"],
        },
        {
            "name": "needs-review",
            "path": "/admin/governor/auditrecord/?needs_review=yes",
            "expect": ["Needs review", "Suspension", "automated_decision_review", "1 audit record"],
        },
        {
            "name": "tenant",
            "path": f"/admin/billing/tenant/{acme.pk}/change/",
            "expect": ["Balance", "Plan", "Last 30 days", "Recent audit records", key_prefix],
        },
        {"name": "tenants", "path": "/admin/billing/tenant/", "expect": ["acme", "globex"]},
        {"name": "usage", "path": "/admin/billing/tenant/usage/", "expect": ["Tokens per day"]},
        {
            "name": "audit-record",
            "path": f"/admin/governor/auditrecord/{flagged.pk}/change/",
            "expect": ["automated_decision_review", "Review decision"],
        },
        {"name": "api-keys", "path": "/admin/billing/apikey/", "expect": [key_prefix]},
        {"name": "ledger", "path": "/admin/billing/ledgerentry/", "expect": ["acme", "settle"]},
        {"name": "holds", "path": "/admin/billing/credithold/", "expect": ["demo/balanced"]},
        {"name": "models", "path": "/admin/chats/llmmodel/", "expect": ["gpt-4o"]},
        {"name": "policies", "path": "/admin/governor/governorpolicy/", "expect": ["policies"]},
        {"name": "chats", "path": "/admin/chats/chat/", "expect": ["Hello from a stored chat"]},
        {"name": "messages", "path": "/admin/chats/message/", "expect": ["offline demo model"]},
        {"name": "projects", "path": "/admin/knowledge/project/", "expect": ["projects"]},
        {"name": "documents", "path": "/admin/knowledge/document/", "expect": ["documents"]},
    ]
    results = run_script(
        "admin.mjs",
        BASE_URL=server.url,
        ADMIN_USER="staff",
        ADMIN_PASSWORD="staff-password-1",
        PAGES=json.dumps(pages),
        SCREENSHOT_DIR=os.environ.get("SCREENSHOT_DIR", ""),
    )
    assert [result["name"] for result in results] == [page["name"] for page in pages]
    unreadable = [
        result
        for result in results
        if result["status"] != 200
        or result["missing"]
        or "AI chat backend" not in result["title"]
        or result["header"] != "AI chat backend"
        or result["overflow"] > 0  # wider than 1400 px
        or result["clipped"]  # a list whose columns are cut off
    ]
    assert unreadable == []
    acme.refresh_from_db()
    assert acme.credit_balance < Decimal(1000)
