from decimal import Decimal

from django.core.management.base import BaseCommand

from billing.models import Tenant
from billing.services import api_key_create, tenant_create

DEMO_TENANT = "demo"


class Command(BaseCommand):
    help = "Create the demo tenant and print its API key, once (first run only)."

    def handle(self, *args, **options):
        if Tenant.objects.filter(name=DEMO_TENANT).exists():
            self.stdout.write(
                f"Demo tenant exists. New key: python manage.py create_api_key {DEMO_TENANT}"
            )
            return
        tenant = tenant_create(name=DEMO_TENANT, plan_name="startup", credits=Decimal(1000))
        _, raw_key = api_key_create(tenant=tenant, name="demo")
        self.stdout.write(
            self.style.SUCCESS(
                f"Created tenant {DEMO_TENANT!r} with 1000 credits. Its API key, shown once:"
            )
        )
        self.stdout.write(f"\n    export API_KEY={raw_key}\n")
