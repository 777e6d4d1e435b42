from django.core.management.base import BaseCommand, CommandError

from billing.models import Tenant
from billing.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a tenant. The key is printed alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("tenant_name")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args, tenant_name: str, name: str, **options):
        tenant = Tenant.objects.filter(name=tenant_name).first()
        if tenant is None:
            raise CommandError(f"No tenant named {tenant_name!r}.")
        _, raw_key = api_key_create(tenant=tenant, name=name)
        self.stderr.write(f"New API key for {tenant.name!r} (shown once):")
        self.stdout.write(raw_key)
