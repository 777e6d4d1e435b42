"""Closing credit holds whose process died (a crash, a ``kill -9``, a lost host).

A live process renews the leases of its open holds while their requests stream
(:mod:`chats.checkpoints`); a hold whose lease lapsed belongs to a process that is gone.
Its request's answer was checkpointed while it streamed: the sweeper settles the hold for
the checkpointed tokens and marks the stored answer ``failed`` with the checkpointed
content; a hold with nothing checkpointed is released.

Safe to run often and from several places at once: each hold is closed in its own
transaction, locked with ``SKIP LOCKED`` on PostgreSQL (a hold being settled or swept
elsewhere is passed over, not waited for), and claimed with a conditional UPDATE on its
status, so no hold is closed twice and none that was settled is touched.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import pricing
from billing.credits import Hold, credits_settle, hold_release
from billing.models import CreditHold
from chats.models import LLMModel, Message

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(frozen=True)
class Sweep:
    released: int = 0  # nothing was generated: the whole hold went back
    settled: int = 0  # settled for what the dead process had checkpointed

    @property
    def closed(self) -> int:
        return self.released + self.settled


def holds_sweep(*, older_than_seconds: float | None = None) -> Sweep:
    """Close the open holds whose lease lapsed more than ``older_than_seconds`` ago
    (default ``HOLD_STALE_AFTER_SECONDS``)."""
    if older_than_seconds is None:
        older_than_seconds = settings.HOLD_STALE_AFTER_SECONDS
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    lapsed = CreditHold.objects.filter(status=CreditHold.Status.OPEN, lease_expires_at__lt=cutoff)
    released = settled = 0
    last_id = 0
    while True:
        ids = list(
            lapsed.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:BATCH_SIZE]
        )
        for hold_id in ids:
            outcome = _close(hold_id, cutoff)
            released += outcome == "released"
            settled += outcome == "settled"
        if len(ids) < BATCH_SIZE:
            break
        last_id = ids[-1]
    if released or settled:
        logger.info("stale credit holds: %d released, %d settled", released, settled)
    return Sweep(released, settled)


def _close(hold_id: int, cutoff: datetime) -> str | None:
    with transaction.atomic():
        row = (
            CreditHold.objects.select_for_update(skip_locked=True)
            .filter(pk=hold_id, status=CreditHold.Status.OPEN, lease_expires_at__lt=cutoff)
            .values_list(
                "tenant_id",
                "amount",
                "reference",
                "model",
                "message_id",
                "prompt_tokens",
                "completion_tokens",
            )
            .first()
        )
        if row is None:  # renewed, or being settled or swept elsewhere right now
            return None
        tenant_id, amount, reference, model, message_id, prompt_tokens, completion_tokens = row
        if message_id is not None:
            answer = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING)
            tokens = answer.values_list("prompt_tokens", "completion_tokens").first()
            prompt_tokens, completion_tokens = tokens or (0, 0)
            answer.update(status=Message.Status.FAILED, finish_reason="interrupted")
        if not completion_tokens:
            hold_release(hold_id=hold_id, note="stale hold: its process stopped renewing it")
            return "released"
        hold = Hold(tenant_id, amount, reference, Decimal(0), hold_id=hold_id)
        credits_settle(
            hold=hold,
            charged=_cost(model, prompt_tokens, completion_tokens),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        return "settled"


def _cost(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """What the checkpointed tokens cost at the model's prices now (capped at the hold
    when settled); nothing for a model no longer in the catalog."""
    prices = LLMModel.objects.filter(name=model).values_list(
        "input_price_per_1k", "output_price_per_1k"
    )
    found = prices.first()
    if found is None:
        logger.warning("stale hold on unknown model %r settled at 0", model)
        return Decimal(0)
    return pricing.cost(
        input_price_per_1k=found[0],
        output_price_per_1k=found[1],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
