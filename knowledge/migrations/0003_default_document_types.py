from django.db import migrations

from knowledge.templates_defaults import create_default_document_types


def create_types(apps, schema_editor):
    create_default_document_types(apps.get_model("knowledge", "DocumentType"))


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0002_search_indexes")]

    operations = [migrations.RunPython(create_types, migrations.RunPython.noop)]
