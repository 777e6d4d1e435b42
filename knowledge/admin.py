from django.contrib import admin
from django.db.models import Count

from knowledge.models import Document, DocumentChunk, DocumentType, Project


@admin.register(DocumentType)
class DocumentTypeAdmin(admin.ModelAdmin):
    """The templates that shape generated documents: staff edit them here."""

    list_display = ["code", "name", "updated_at"]
    search_fields = ["code", "name", "description"]
    fields = ["code", "name", "description", "template", "example", "updated_at"]
    readonly_fields = ["updated_at"]


class DocumentInline(admin.TabularInline):
    model = Document
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = ("path", "document_type", "language", "size_bytes", "updated_at")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["external_id", "name", "tenant", "document_count", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["external_id", "name", "tenant__name", "id"]
    list_select_related = ["tenant"]
    inlines = [DocumentInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(document_count=Count("documents"))

    @admin.display(ordering="document_count", description="documents")
    def document_count(self, project: Project) -> int:
        return project.document_count  # type: ignore[attr-defined]  # get_queryset annotates it

    def get_readonly_fields(self, request, obj=None):
        # A project's tenant and id are what clients refer to it by: fixed once created.
        return ["id", "tenant", "external_id", "created_at"] if obj else ["id", "created_at"]


class ChunkInline(admin.TabularInline):
    model = DocumentChunk
    extra = 0
    can_delete = False
    fields = readonly_fields = ("ordinal", "token_count", "text")
    ordering = ["ordinal"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    """Read-only: documents come in through the API, which chunks and indexes them."""

    list_display = ["path", "project", "document_type", "size_bytes", "updated_at"]
    list_filter = ["document_type", "language", "project__tenant"]
    search_fields = ["path", "project__external_id", "project__tenant__name"]
    list_select_related = ["project"]
    fields = readonly_fields = (
        "id",
        "project",
        "path",
        "document_type",
        "language",
        "size_bytes",
        "created_at",
        "updated_at",
        "content",
    )
    inlines = [ChunkInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
