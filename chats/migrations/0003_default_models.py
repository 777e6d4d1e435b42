from django.db import migrations

from chats.catalog_defaults import create_default_models


def create_models(apps, schema_editor):
    create_default_models(apps.get_model("chats", "LLMModel"))


class Migration(migrations.Migration):
    dependencies = [("chats", "0002_llm_model")]

    operations = [migrations.RunPython(create_models, migrations.RunPython.noop)]
