from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.sweeper import holds_release_stale


class Command(BaseCommand):
    help = (
        "Release credit holds that were never settled. Safe to run often (e.g. every "
        "minute from cron) and from several hosts at once."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Age after which an open hold is stale "
            f"(default: HOLD_STALE_AFTER_SECONDS, now {settings.HOLD_STALE_AFTER_SECONDS}).",
        )

    def handle(self, *args, older_than: float | None, **options):
        if older_than is not None and older_than < 0:
            raise CommandError("--older-than cannot be negative.")
        released = holds_release_stale(older_than_seconds=older_than)
        self.stdout.write(f"Released {released} stale hold(s).")
