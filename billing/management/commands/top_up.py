from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.models import Tenant
from billing.services import credits_top_up


class Command(BaseCommand):
    help = "Add credits to a tenant's balance (recorded in the ledger)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="The tenant's name.")
        parser.add_argument("amount", help="Credits to add (positive).")
        parser.add_argument("--note", default="", help="Why, for the ledger.")

    def handle(self, *args, tenant: str, amount: str, note: str, **options):
        target = Tenant.objects.filter(name=tenant).first()
        if target is None:
            raise CommandError(f"No tenant named {tenant!r}.")
        try:
            credits = Decimal(amount)
        except InvalidOperation:
            raise CommandError(f"The amount must be a number, not {amount!r}.") from None
        if not credits.is_finite() or credits <= 0:
            raise CommandError("The amount must be positive.")
        if credits != credits.quantize(Decimal("0.000001")):
            raise CommandError("The amount has more than 6 decimal places.")
        entry = credits_top_up(tenant=target, amount=credits, note=note or "top_up command")
        self.stdout.write(f"Topped up {target.name} by {credits}; balance {entry.balance_after}.")
