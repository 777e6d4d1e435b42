"""Releasing credit holds nobody settled (a process died mid-request, a bug, a deploy).

Safe to run often and from several places at once: each hold is released in its own
transaction, locked with ``SKIP LOCKED`` on PostgreSQL (a hold being settled or swept
elsewhere is passed over, not waited for), and claimed with a conditional UPDATE on its
status, so no hold is released twice and none that was settled is released.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.credits import hold_release
from billing.models import CreditHold

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


def holds_release_stale(
    *, older_than_seconds: float | None = None, now: datetime | None = None
) -> int:
    """Release the open holds older than ``older_than_seconds`` (default
    ``HOLD_STALE_AFTER_SECONDS``); returns how many this call released."""
    if older_than_seconds is None:
        older_than_seconds = settings.HOLD_STALE_AFTER_SECONDS
    cutoff = (now or timezone.now()) - timedelta(seconds=older_than_seconds)
    stale = CreditHold.objects.filter(status=CreditHold.Status.OPEN, created_at__lt=cutoff)
    released = 0
    last_id = 0
    while True:
        ids = list(
            stale.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:BATCH_SIZE]
        )
        for hold_id in ids:
            with transaction.atomic():
                locked = (
                    CreditHold.objects.select_for_update(skip_locked=True)
                    .filter(pk=hold_id, status=CreditHold.Status.OPEN)
                    .values_list("pk", flat=True)
                    .first()
                )
                if locked is None:  # being settled or swept elsewhere right now
                    continue
                if hold_release(hold_id=hold_id, note="stale hold: never settled") is not None:
                    released += 1
        if len(ids) < BATCH_SIZE:
            break
        last_id = ids[-1]
    if released:
        logger.info("released %d stale credit hold(s)", released)
    return released
