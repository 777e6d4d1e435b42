from django.db import migrations

from billing.plans import DEFAULT_PLANS


def create_plans(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for name, display_name, per_minute, burst in DEFAULT_PLANS:
        Plan.objects.get_or_create(
            name=name,
            defaults={
                "display_name": display_name,
                "requests_per_minute": per_minute,
                "burst": burst,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create_plans, migrations.RunPython.noop)]
