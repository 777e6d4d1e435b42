"""What the admin's overview and tenant pages show: reads only, over the billing record
(settled credit holds), the governor's audit records and this process's metrics."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from billing.models import Tenant
from billing.usage import UsageRow, usage_by_day
from chatproject import metrics
from governor.models import AuditRecord
from governor.vocabulary import RISK_LEVELS


def needs_review() -> Q:
    """Audit records a person should look at: flagged for review and not reviewed yet, or
    escalated by a reviewer."""
    return Q(decision="review", reviewed_at__isnull=True) | Q(
        review_decision=AuditRecord.ReviewDecision.ESCALATED
    )


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    x: float
    y: float
    height: float


@dataclass(frozen=True)
class BarChart:
    """Geometry of a plain bar chart for an inline SVG: one bar per value."""

    width: int
    height: int
    bar_width: float
    bars: list[Bar]
    peak: float


def bar_chart(
    points: list[tuple[str, float]], *, width: int = 380, height: int = 80, gap: float = 0.25
) -> BarChart:
    peak = max((value for _, value in points), default=0)
    slot = width / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        bar_height = round(height * value / peak, 2) if peak else 0
        x = round(i * slot + slot * gap / 2, 2)
        bars.append(Bar(label, value, x, round(height - bar_height, 2), bar_height))
    return BarChart(width, height, round(slot * (1 - gap), 2), bars, peak)


@dataclass(frozen=True)
class Day:
    day: date
    requests: int
    tokens: int
    credits: Decimal


def per_day(rows: list[UsageRow], *, days: int, today: date) -> list[Day]:
    """Usage rows summed per day over the whole range, empty days included."""
    totals: dict[date, list] = defaultdict(lambda: [0, 0, Decimal(0)])
    for row in rows:
        total = totals[row.day]
        total[0] += row.requests
        total[1] += row.total_tokens
        total[2] += row.credits
    start = today - timedelta(days=days - 1)
    return [
        Day(day, *totals.get(day, (0, 0, Decimal(0))))
        for day in (start + timedelta(days=i) for i in range(days))
    ]


def total(series: list[Day]) -> Day:
    """The range's sums, dated by its last day."""
    return Day(
        series[-1].day,
        sum(d.requests for d in series),
        sum(d.tokens for d in series),
        sum((d.credits for d in series), Decimal(0)),
    )


@dataclass(frozen=True)
class TenantUsage:
    tenant_id: int
    name: str
    requests: int
    tokens: int
    credits: Decimal


def top_tenants(rows: list[UsageRow], limit: int = 5) -> list[TenantUsage]:
    """The tenants charged the most credits in ``rows``, then by tokens."""
    sums: dict[int, list] = {}
    for row in rows:
        total = sums.setdefault(row.tenant_id, [row.tenant_name, 0, 0, Decimal(0)])
        total[1] += row.requests
        total[2] += row.total_tokens
        total[3] += row.credits
    ranked = sorted(sums.items(), key=lambda item: (item[1][3], item[1][2]), reverse=True)
    return [TenantUsage(tenant_id, *total) for tenant_id, total in ranked[:limit]]


@dataclass(frozen=True)
class LevelCount:
    level: str
    approved: int
    rejected: int

    @property
    def total(self) -> int:
        return self.approved + self.rejected


def decisions_by_level(records: QuerySet[AuditRecord]) -> list[LevelCount]:
    counts = {
        row["risk_level"]: (row["n_approved"], row["n_rejected"])
        for row in records.order_by()
        .values("risk_level")
        .annotate(
            n_approved=Count("id", filter=Q(approved=True)),
            n_rejected=Count("id", filter=Q(approved=False)),
        )
    }
    return [LevelCount(level, *counts.get(level, (0, 0))) for level in RISK_LEVELS]


def errors_by_code() -> list[tuple[str, int]]:
    """Requests this process refused before any token, by error code, since it started
    (the ``chat_refusals_total`` metric; every process counts its own)."""
    counts = [
        (sample.labels["code"], int(sample.value))
        for metric in metrics.REFUSALS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    ]
    return sorted(counts, key=lambda item: (-item[1], item[0]))


@dataclass(frozen=True)
class Overview:
    days: list[Day]
    requests_chart: BarChart
    tokens_chart: BarChart
    credits_chart: BarChart
    totals: Day
    top_tenants: list[TenantUsage]
    decisions: list[LevelCount]
    errors: list[tuple[str, int]]
    review_count: int
    review_queue: list[AuditRecord]


def overview(*, days: int = 14, today: date | None = None) -> Overview:
    today = today or timezone.localdate()
    rows = usage_by_day(days=days, today=today)
    series = per_day(rows, days=days, today=today)
    since = timezone.now() - timedelta(days=days)
    queue = AuditRecord.objects.filter(needs_review()).select_related("tenant")
    return Overview(
        days=series,
        requests_chart=bar_chart([(d.day.isoformat(), d.requests) for d in series]),
        tokens_chart=bar_chart([(d.day.isoformat(), d.tokens) for d in series]),
        credits_chart=bar_chart([(d.day.isoformat(), float(d.credits)) for d in series]),
        totals=total(series),
        top_tenants=top_tenants(rows),
        decisions=decisions_by_level(AuditRecord.objects.filter(created_at__gte=since)),
        errors=errors_by_code(),
        review_count=queue.count(),
        review_queue=list(queue.order_by("-created_at")[:5]),
    )


@dataclass(frozen=True)
class TenantSummary:
    usage: list[Day]
    sparkline: BarChart
    totals: Day
    recent_audit: list[AuditRecord]
    review_count: int


def tenant_summary(tenant: Tenant, *, days: int = 30, today: date | None = None) -> TenantSummary:
    today = today or timezone.localdate()
    series = per_day(
        usage_by_day(tenant_id=tenant.pk, days=days, today=today), days=days, today=today
    )
    records = AuditRecord.objects.filter(tenant=tenant)
    return TenantSummary(
        usage=series,
        sparkline=bar_chart(
            [(d.day.isoformat(), float(d.credits)) for d in series], width=360, height=48, gap=0.2
        ),
        totals=total(series),
        recent_audit=list(records.order_by("-created_at")[:10]),
        review_count=records.filter(needs_review()).count(),
    )
