from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.sweeper import holds_sweep


class Command(BaseCommand):
    help = (
        "Close the credit holds of processes that died: those whose lease lapsed. A hold "
        "whose answer was checkpointed is settled for it (the answer is marked failed), "
        "any other released. Safe to run often (e.g. every minute from cron) and from "
        "several hosts at once."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            metavar="SECONDS",
            help="How long ago an open hold's lease must have lapsed for it to be closed "
            f"(default: HOLD_STALE_AFTER_SECONDS, now {settings.HOLD_STALE_AFTER_SECONDS:g}).",
        )

    def handle(self, *args, older_than: float | None, **options):
        if older_than is not None and older_than < 0:
            raise CommandError("--older-than cannot be negative.")
        sweep = holds_sweep(older_than_seconds=older_than)
        self.stdout.write(
            f"Released {sweep.released} stale hold(s); settled {sweep.settled} for "
            "their checkpointed answers."
        )
