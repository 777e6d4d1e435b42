import shlex
import sys
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from billing.models import Tenant
from billing.services import api_key_create, tenant_create

DEMO_TENANT = "demo"


def manage_command(*args: str) -> str:
    """A ``manage.py`` command line that runs as printed from the project directory: with
    this process's interpreter (the virtualenv's), and DEBUG when it is on here."""
    python = Path(sys.executable)
    if python.is_relative_to(settings.BASE_DIR):
        python = python.relative_to(settings.BASE_DIR)
    line = shlex.join([str(python), "manage.py", *args])
    return f"DEBUG=true {line}" if settings.DEBUG else line


class Command(BaseCommand):
    help = "Create the demo tenant and print its API key, once (first run only)."

    def handle(self, *args, **options):
        if Tenant.objects.filter(name=DEMO_TENANT).exists():
            new_key = manage_command("create_api_key", DEMO_TENANT)
            self.stdout.write(
                f"Demo tenant exists. A new key for it:\n\n    export API_KEY=$({new_key})\n"
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
