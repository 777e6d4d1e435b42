from django.db import migrations

from billing.plans import create_default_plans


def create_plans(apps, schema_editor):
    create_default_plans(apps.get_model("billing", "Plan"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create_plans, migrations.RunPython.noop)]
