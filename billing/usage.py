"""Usage per tenant, model and day, read from the assistant messages (selectors only).

Messages go with their chat when it is deleted, so this is the usage of the chats that
still exist; the ledger remains the record of what was charged.
"""

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.pricing import cost
from chats.models import LLMModel, Message

# Bar colours for the chart, one per model, in order of first appearance.
PALETTE = ["#417690", "#e08e0b", "#5b9e4d", "#a05195", "#d45087", "#2f4b7c", "#79aec8", "#888"]


@dataclass(frozen=True)
class UsageRow:
    day: date
    tenant_id: int
    tenant_name: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: Decimal | None  # at the model's current prices; None for a model no longer known

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_by_day(
    *, tenant_id: int | None = None, days: int = 30, today: date | None = None
) -> list[UsageRow]:
    """Assistant messages of the last ``days`` days (today included) grouped by day, tenant
    and model, oldest day first."""
    today = today or timezone.localdate()
    since = today - timedelta(days=days - 1)
    messages = Message.objects.filter(role=Message.Role.ASSISTANT, created_at__date__gte=since)
    if tenant_id is not None:
        messages = messages.filter(chat__tenant_id=tenant_id)
    groups = (
        messages.annotate(day=TruncDate("created_at"))
        .values("day", "chat__tenant_id", "chat__tenant__name", "model")
        .annotate(
            requests=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
        )
        .order_by("day", "chat__tenant__name", "model")
    )
    prices = {
        m.name: (m.input_price_per_1k, m.output_price_per_1k)
        for m in LLMModel.objects.only("name", "input_price_per_1k", "output_price_per_1k")
    }
    rows = []
    for group in groups:
        price = prices.get(group["model"])
        prompt, completion = group["prompt"] or 0, group["completion"] or 0
        rows.append(
            UsageRow(
                day=group["day"],
                tenant_id=group["chat__tenant_id"],
                tenant_name=group["chat__tenant__name"],
                model=group["model"] or "(unknown)",
                requests=group["requests"],
                prompt_tokens=prompt,
                completion_tokens=completion,
                credits=cost(
                    input_price_per_1k=price[0],
                    output_price_per_1k=price[1],
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )
                if price
                else None,
            )
        )
    return rows


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
