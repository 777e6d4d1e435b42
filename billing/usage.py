"""Usage per tenant, model and day, read from the credit holds (selectors only).

Every billed request of every transport (chats, the stateless endpoints, the
OpenAI-compatible API) takes a hold naming its model and settles it with the tokens it
used and the credits it was charged, so the holds are the billing record: chats deleted
since, and traffic that stores no messages, are in it, and credits are what was charged
then, not a recomputation at today's prices.

What is counted: settled holds, by the day they were settled. That is every request that
ran to an ending, complete, failed or cancelled, including a failure before any token
(settled at 0 tokens and 0 credits). Released holds are not requests here: nothing was
used or charged (the caller left during admission, or the sweeper closed a hold nobody
settled; a late settle after that turns it into a settled one). Requests without a hold
row are not in it either: answers from the response cache and idempotent replays (no
hold), and models priced at zero (a zero hold writes no row).
"""

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import CreditHold

# Bar colours for the chart, one per model, in order of first appearance.
PALETTE = ["#417690", "#e08e0b", "#5b9e4d", "#a05195", "#d45087", "#2f4b7c", "#79aec8", "#888"]

# Holds taken before holds recorded their model.
UNKNOWN_MODEL = "(unknown)"


@dataclass(frozen=True)
class UsageRow:
    day: date
    tenant_id: int
    tenant_name: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: Decimal  # what was charged

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def usage_by_day(
    *, tenant_id: int | None = None, days: int = 30, today: date | None = None
) -> list[UsageRow]:
    """Settled holds of the last ``days`` days (today included) grouped by day, tenant and
    model, oldest day first."""
    today = today or timezone.localdate()
    since = today - timedelta(days=days - 1)
    # A range on the column itself (not closed_at__date), so an index on it can serve.
    holds = CreditHold.objects.filter(
        status=CreditHold.Status.SETTLED,
        closed_at__gte=_start_of(since),
        closed_at__lt=_start_of(today + timedelta(days=1)),
    )
    if tenant_id is not None:
        holds = holds.filter(tenant_id=tenant_id)
    # Grouped by plain columns and the selected day only (which PostgreSQL groups by its
    # position), and the unknown-model label set in Python: under server-side binding a
    # parameter repeated in SELECT and GROUP BY is not the same expression (Django #34255).
    groups = (
        holds.annotate(day=TruncDate("closed_at"))
        .values("day", "tenant_id", "tenant__name", "model")
        .annotate(
            requests=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            charged=Sum("charged"),
        )
        .order_by("day", "tenant__name", "model")
    )
    return [
        UsageRow(
            day=group["day"],
            tenant_id=group["tenant_id"],
            tenant_name=group["tenant__name"],
            model=group["model"] or UNKNOWN_MODEL,
            requests=group["requests"],
            prompt_tokens=group["prompt"] or 0,
            completion_tokens=group["completion"] or 0,
            credits=group["charged"] or Decimal(0),
        )
        for group in groups
    ]


@dataclass
class ChartBar:
    day: date
    x: float
    label: str
    total: int = 0
    segments: list[dict] = field(default_factory=list)


@dataclass
class UsageChart:
    width: int
    height: int
    bar_width: float
    max_total: int
    bars: list[ChartBar]
    legend: list[tuple[str, str]]  # (model, colour)


def usage_chart(
    rows: list[UsageRow],
    *,
    days: int = 30,
    today: date | None = None,
    width: int = 720,
    height: int = 200,
) -> UsageChart:
    """Geometry of a stacked bar chart of tokens per day and model, for an inline SVG:
    one bar per day of the range (empty days included), one segment per model."""
    today = today or timezone.localdate()
    start = today - timedelta(days=days - 1)
    colours: dict[str, str] = {}
    per_day: dict[date, dict[str, int]] = {}
    for row in rows:
        colours.setdefault(row.model, PALETTE[len(colours) % len(PALETTE)])
        models = per_day.setdefault(row.day, {})
        models[row.model] = models.get(row.model, 0) + row.total_tokens
    max_total = max((sum(m.values()) for m in per_day.values()), default=0)
    slot = width / days
    bars = []
    for i in range(days):
        day = start + timedelta(days=i)
        bar = ChartBar(day=day, x=round(i * slot + slot * 0.1, 2), label=day.strftime("%m-%d"))
        y = float(height)
        for model, tokens in sorted(per_day.get(day, {}).items()):
            segment_height = round(height * tokens / max_total, 2) if max_total else 0
            y -= segment_height
            bar.segments.append(
                {
                    "model": model,
                    "tokens": tokens,
                    "y": round(y, 2),
                    "height": segment_height,
                    "colour": colours[model],
                }
            )
            bar.total += tokens
        bars.append(bar)
    return UsageChart(
        width=width,
        height=height,
        bar_width=round(slot * 0.8, 2),
        max_total=max_total,
        bars=bars,
        legend=list(colours.items()),
    )
