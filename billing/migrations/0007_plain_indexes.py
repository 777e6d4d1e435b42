import django.db.models.deletion
from django.db import migrations, models

from chatproject.index_migrations import plain_column_indexes


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_plan_max_concurrent_generations"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="credithold",
                    name="reference",
                    field=models.CharField(blank=True, max_length=100),
                ),
                migrations.AlterField(
                    model_name="ledgerentry",
                    name="reference",
                    field=models.CharField(blank=True, max_length=100),
                ),
                migrations.AlterField(
                    model_name="ledgerentry",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="ledger",
                        to="billing.tenant",
                    ),
                ),
                migrations.AddIndex(
                    model_name="credithold",
                    index=models.Index(fields=["reference"], name="credithold_reference_idx"),
                ),
                migrations.AddIndex(
                    model_name="ledgerentry",
                    index=models.Index(fields=["reference"], name="ledger_reference_idx"),
                ),
            ],
            database_operations=[
                plain_column_indexes(
                    "billing.CreditHold", {"reference": "credithold_reference_idx"}
                ),
                plain_column_indexes(
                    "billing.LedgerEntry",
                    {"reference": "ledger_reference_idx"},
                    dropped=("tenant_id",),
                ),
            ],
        ),
    ]
