"""The search indexes, which differ by database and so stay out of the model state:
PostgreSQL gets a GIN index on the chunks' tsvector, SQLite an FTS5 table kept in step
by triggers (see knowledge.search)."""

from django.db import migrations

GIN_INDEX = "knowledge_chunk_search_gin"


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {GIN_INDEX} ON knowledge_documentchunk "
            "USING gin (search_vector)"
        )
    elif vendor == "sqlite":
        from knowledge.search import sqlite_install

        sqlite_install(schema_editor)


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {GIN_INDEX}")
    elif vendor == "sqlite":
        from knowledge.search import sqlite_uninstall

        sqlite_uninstall(schema_editor)


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
