import django.db.models.deletion
from django.db import migrations, models

from chatproject.index_migrations import plain_column_indexes


class Migration(migrations.Migration):
    dependencies = [
        ("governor", "0004_output_redact_help_text"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="auditrecord",
                    name="recipient_email_hash",
                    field=models.CharField(
                        blank=True,
                        help_text="Keyed SHA-256 of the lower-cased address.",
                        max_length=64,
                    ),
                ),
                migrations.AlterField(
                    model_name="auditrecord",
                    name="request_id",
                    field=models.CharField(max_length=128),
                ),
                migrations.AlterField(
                    model_name="auditrecord",
                    name="sender_id",
                    field=models.CharField(blank=True, max_length=255),
                ),
                migrations.AlterField(
                    model_name="auditrecord",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="governor_audit_records",
                        to="billing.tenant",
                    ),
                ),
                migrations.AddIndex(
                    model_name="auditrecord",
                    index=models.Index(fields=["request_id"], name="audit_request_id_idx"),
                ),
                migrations.AddIndex(
                    model_name="auditrecord",
                    index=models.Index(fields=["sender_id"], name="audit_sender_id_idx"),
                ),
                migrations.AddIndex(
                    model_name="auditrecord",
                    index=models.Index(
                        fields=["recipient_email_hash"], name="audit_recipient_email_idx"
                    ),
                ),
            ],
            database_operations=[
                plain_column_indexes(
                    "governor.AuditRecord",
                    {
                        "request_id": "audit_request_id_idx",
                        "sender_id": "audit_sender_id_idx",
                        "recipient_email_hash": "audit_recipient_email_idx",
                    },
                    dropped=("tenant_id",),
                ),
            ],
        ),
    ]
