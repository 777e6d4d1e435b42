"""A migration step for tables written on every request: a column's ``db_index=True``
turned into a plain index of ``Meta.indexes``, without building it again.

On PostgreSQL, ``db_index=True`` on a CharField makes two indexes, the btree and a
``varchar_pattern_ops`` one for ``LIKE 'x%'``, which no query here makes; each costs every
INSERT. :func:`plain_column_indexes` renames the existing btree to its new name (a rename
takes no time, where building an index on a large table would block its writes for as
long), drops the pattern index, and drops the indexes of columns that a composite index
already leads with. A database without the old index (SQLite keeps no pattern index, and
cannot rename one) gets the new one built.
"""

from collections.abc import Callable

from django.db import migrations


def plain_column_indexes(
    model: str, renamed: dict[str, str], dropped: tuple[str, ...] = ()
) -> migrations.RunPython:
    """The database side of the change for ``model`` ("app_label.Model"): ``renamed``
    maps a column to its index's new name; ``dropped`` lists columns whose own index goes."""

    def forwards(apps, schema_editor) -> None:
        table = apps.get_model(model)._meta.db_table
        index_of, existing, run = _tools(schema_editor, table)
        postgres = schema_editor.connection.vendor == "postgresql"
        for column, name in renamed.items():
            old = index_of(column)
            if old in existing and postgres:
                run(f"ALTER INDEX {_q(schema_editor, old)} RENAME TO {_q(schema_editor, name)}")
            else:
                if old in existing:
                    run(f"DROP INDEX {_q(schema_editor, old)}")
                run(_create(schema_editor, name, table, column))
            like = index_of(column, "_like")
            if like in existing:
                run(f"DROP INDEX {_q(schema_editor, like)}")
        for column in dropped:
            if index_of(column) in existing:
                run(f"DROP INDEX {_q(schema_editor, index_of(column))}")

    def backwards(apps, schema_editor) -> None:
        table = apps.get_model(model)._meta.db_table
        index_of, existing, run = _tools(schema_editor, table)
        postgres = schema_editor.connection.vendor == "postgresql"
        for column, name in renamed.items():
            if name in existing:
                run(f"DROP INDEX {_q(schema_editor, name)}")
            run(_create(schema_editor, index_of(column), table, column))
            if postgres:
                pattern = f"{_q(schema_editor, column)} varchar_pattern_ops"
                like = _q(schema_editor, index_of(column, "_like"))
                run(f"CREATE INDEX {like} ON {_q(schema_editor, table)} ({pattern})")
        for column in dropped:
            run(_create(schema_editor, index_of(column), table, column))

    return migrations.RunPython(forwards, backwards)


def _tools(schema_editor, table: str) -> tuple[Callable[..., str], set[str], Callable]:
    """How Django names a column's index in ``table``, the indexes it has, and a runner."""
    with schema_editor.connection.cursor() as cursor:
        existing = set(schema_editor.connection.introspection.get_constraints(cursor, table))

    def index_of(column: str, suffix: str = "") -> str:
        return schema_editor._create_index_name(table, [column], suffix=suffix)

    return index_of, existing, schema_editor.execute


def _q(schema_editor, name: str) -> str:
    return schema_editor.quote_name(name)


def _create(schema_editor, name: str, table: str, column: str) -> str:
    return (
        f"CREATE INDEX {_q(schema_editor, name)} "
        f"ON {_q(schema_editor, table)} ({_q(schema_editor, column)})"
    )
