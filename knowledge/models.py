"""Projects, their documents and the chunks the knowledge-base search runs over.

Search indexes live outside the model state on purpose (see migration 0001): on
PostgreSQL a GIN index on ``DocumentChunk.search_vector``; on SQLite an FTS5 table kept in
step by triggers. A future migration that makes SQLite remake the chunk table (an
``AlterField`` on it) drops those triggers: re-run ``knowledge.search.sqlite_install``.
"""

import uuid

from django.contrib.postgres.search import SearchVectorField
from django.core.validators import RegexValidator
from django.db import models

# PostgreSQL text search configurations a document may be indexed with (all ship with
# PostgreSQL); SQLite indexes every language with the same Porter stemmer.
LANGUAGES = [
    "simple",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "turkish",
]
DEFAULT_LANGUAGE = "english"


class DocumentType(models.Model):
    """A kind of document the service generates, with the template that shapes it."""

    UNSORTED = "UNSORTED"

    code = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9_]+$", "Letters, digits and underscores.")],
        help_text="e.g. ARCHITECTURE_SPEC (stored in capitals)",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, help_text="What a document of this type is for.")
    template = models.TextField(blank=True, help_text="The Markdown skeleton to follow.")
    example = models.TextField(blank=True, help_text="A short example of a good document.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]
        verbose_name = "document type"

    def __str__(self) -> str:
        return self.code

    def save(self, *args, **kwargs) -> None:
        self.code = self.code.strip().upper()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        self.code = self.code.strip().upper()  # before the form's uniqueness check


class Project(models.Model):
    """A tenant's project: the scope of a knowledge base."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("billing.Tenant", on_delete=models.CASCADE, related_name="projects")
    external_id = models.CharField(
        max_length=255, help_text="The tenant's own id, sent as project_id by clients."
    )
    name = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "external_id"], name="project_unique_per_tenant"
            )
        ]

    def __str__(self) -> str:
        return self.external_id


class Document(models.Model):
    """One text or Markdown document of a project; its path is unique in the project."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="documents")
    path = models.CharField(max_length=500, help_text="e.g. docs/ARCHITECTURE.md")
    document_type = models.CharField(max_length=64, default=DocumentType.UNSORTED)
    content = models.TextField()
    language = models.CharField(
        max_length=32,
        choices=[(name, name) for name in LANGUAGES],
        default=DEFAULT_LANGUAGE,
        help_text="The text search configuration it is indexed with.",
    )
    size_bytes = models.PositiveIntegerField(help_text="UTF-8 size of the content.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.UniqueConstraint(fields=["project", "path"], name="document_unique_path")
        ]

    def __str__(self) -> str:
        return self.path


class DocumentChunk(models.Model):
    """A piece of a document (~500 tokens), the unit of retrieval.

    ``project`` repeats the document's project so that search scopes with one indexed
    column. ``search_vector`` is filled on PostgreSQL only (NULL on SQLite).
    """

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField()
    search_vector = SearchVectorField(null=True, editable=False)

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
