"""Reads on projects, documents and document types, always scoped to one tenant."""

import uuid

from django.db.models import Count, QuerySet

from billing.models import Tenant
from chatproject.errors import ApiError, ErrorCode
from knowledge.models import Document, DocumentChunk, DocumentType, Project
from knowledge.templates_defaults import DEFAULT_DOCUMENT_TYPES


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def project_find(*, tenant: Tenant, project_id: str | None) -> Project | None:
    """The tenant's project by external id, else by UUID; None when there is none."""
    if not project_id:
        return None
    projects = Project.objects.filter(tenant=tenant)
    project = projects.filter(external_id=project_id).first()
    if project is None and (pk := _as_uuid(project_id)) is not None:
        project = projects.filter(pk=pk).first()
    return project


def project_get(*, tenant: Tenant, project_id: str) -> Project:
    """The tenant's project; another tenant's is as missing as a deleted one."""
    project = project_find(tenant=tenant, project_id=project_id)
    if project is None:
        raise ApiError(ErrorCode.NOT_FOUND, "Project not found.")
    return project


def project_list(*, tenant: Tenant) -> QuerySet[Project]:
    """The tenant's projects, newest first, with their document counts."""
    return (
        Project.objects.filter(tenant=tenant)
        .annotate(document_count=Count("documents"))
        .order_by("-created_at", "id")
    )


def project_document_count(*, project: Project) -> int:
    return Document.objects.filter(project=project).count()


def document_list(*, project: Project) -> QuerySet[Document]:
    """The project's documents by path, without their content."""
    return (
        Document.objects.filter(project=project)
        .defer("content")
        .annotate(chunk_count=Count("chunks"))
        .order_by("path")
    )


def document_get(*, project: Project, document_id: str) -> Document:
    pk = _as_uuid(document_id)
    if pk is None:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "Invalid document id.",
            details={"document_id": [f"{document_id!r} is not a valid UUID."]},
        )
    document = (
        Document.objects.filter(project=project, pk=pk)
        .annotate(chunk_count=Count("chunks"))
        .first()
    )
    if document is None:
        raise ApiError(ErrorCode.NOT_FOUND, "Document not found.")
    return document


def document_type_codes() -> list[str]:
    """The known type codes (the built-in ones when the table is empty)."""
    codes = list(DocumentType.objects.values_list("code", flat=True))
    return codes or [row[0] for row in DEFAULT_DOCUMENT_TYPES]


def document_type_for(code: str | None) -> DocumentType:
    """The document type of ``code`` (case-insensitive), else UNSORTED.

    The built-in defaults stand in when the table has neither (tests flush it).
    """
    wanted = (code or DocumentType.UNSORTED).strip().upper()
    stored = DocumentType.objects.filter(code__in=[wanted, DocumentType.UNSORTED])
    types = {t.code: t for t in stored}
    found = types.get(wanted) or types.get(DocumentType.UNSORTED)
    if found is None:
        found = _default_type(wanted) or _default_type(DocumentType.UNSORTED)
    assert found is not None  # UNSORTED is one of the built-in types
    return found


def _default_type(code: str) -> DocumentType | None:
    for code_, name, description, template, example in DEFAULT_DOCUMENT_TYPES:
        if code_ == code:
            return DocumentType(
                code=code, name=name, description=description, template=template, example=example
            )
    return None


def chunks_by_id(ids: list[int]) -> dict[int, DocumentChunk]:
    """Chunks with their document's path and type (not its content)."""
    return DocumentChunk.objects.select_related("document").defer("document__content").in_bulk(ids)
