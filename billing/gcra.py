"""GCRA, the generic cell rate algorithm: a token bucket kept as one timestamp, the
"theoretical arrival time" (TAT).

A fresh bucket admits ``burst`` requests at once; after that one more every
``interval_us``. The stores decide with :func:`gcra` (in memory) or its Lua twin (in
Redis, :mod:`billing.store`).
"""

from dataclasses import dataclass

from billing.models import Plan

MICROS = 1_000_000


@dataclass(frozen=True)
class Decision:
    """One GCRA decision, in microseconds."""

    allowed: bool
    remaining: int
    retry_after_us: int  # 0 when allowed
    reset_after_us: int  # until the bucket is full again


@dataclass(frozen=True)
class Rate:
    interval_us: int  # one request's worth of time
    burst: int

    @classmethod
    def per_second(cls, count: int) -> "Rate":
        """``count`` a second, in bursts of as many."""
        count = max(1, count)
        return cls(interval_us=max(1, round(MICROS / count)), burst=count)

    @classmethod
    def of(cls, plan: Plan) -> "Rate | None":
        """The plan's request rate; None when it is unlimited."""
        if plan.requests_per_minute is None:
            return None
        per_minute = max(1, plan.requests_per_minute)
        burst = plan.burst if plan.burst else per_minute
        return cls(interval_us=max(1, round(60 * MICROS / per_minute)), burst=max(1, burst))


def gcra(*, tat_us: int | None, now_us: int, rate: Rate) -> tuple[Decision, int | None]:
    """The pure GCRA step: the decision and the new arrival time to store (None: unchanged).

    The Lua script of :mod:`billing.store` is this function, line for line.
    """
    tat = max(tat_us if tat_us is not None else now_us, now_us)
    new_tat = tat + rate.interval_us
    allow_at = new_tat - rate.interval_us * rate.burst
    if now_us < allow_at:
        return Decision(False, 0, allow_at - now_us, tat - now_us), None
    remaining = (now_us - allow_at) // rate.interval_us
    return Decision(True, remaining, 0, new_tat - now_us), new_tat
