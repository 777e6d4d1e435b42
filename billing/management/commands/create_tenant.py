from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.models import Plan, Tenant
from billing.services import api_key_create, tenant_create


class Command(BaseCommand):
    help = "Create a tenant and its first API key. The key is printed alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--plan", default="free", help="Plan name (default: free).")
        parser.add_argument("--credits", default="0", help="Initial credit balance.")

    def handle(self, *args, name: str, plan: str, credits: str, **options):
        if Tenant.objects.filter(name=name).exists():
            raise CommandError(f"A tenant named {name!r} exists already.")
        if not Plan.objects.filter(name=plan).exists():
            names = ", ".join(Plan.objects.values_list("name", flat=True))
            raise CommandError(f"Unknown plan {plan!r}; choose one of: {names}.")
        try:
            amount = Decimal(credits)
        except InvalidOperation:
            raise CommandError(f"--credits must be a number, not {credits!r}.") from None
        if amount < 0:
            raise CommandError("--credits cannot be negative.")
        tenant = tenant_create(name=name, plan_name=plan, credits=amount)
        _, raw_key = api_key_create(tenant=tenant, name="initial")
        self.stderr.write(
            f"Created tenant {tenant.name!r} on plan {plan} with {tenant.credit_balance} "
            "credits. Its API key (shown once):"
        )
        self.stdout.write(raw_key)
