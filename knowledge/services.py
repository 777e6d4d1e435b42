"""Writes on projects and documents. A document is chunked and indexed in the same
transaction that stores it, so search never sees half a document."""

import re
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from billing.models import Tenant
from chatproject.errors import ApiError, ErrorCode, PayloadTooLarge
from knowledge import search, selectors
from knowledge.chunking import chunk_document
from knowledge.models import DEFAULT_LANGUAGE, LANGUAGES, Document, DocumentChunk, Project
from knowledge.retrieval import RetrievalError, RetrievedContext, build_context

DEFAULT_MAX_DOCUMENT_BYTES = 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class DocumentTooLarge(PayloadTooLarge):
    """A document over ``KNOWLEDGE_MAX_DOCUMENT_BYTES``: answered with HTTP 413."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"The document is {size} bytes; documents may be at most {limit} bytes.",
            limit=limit,
            field="content",
        )


def max_document_bytes() -> int:
    return int(getattr(settings, "KNOWLEDGE_MAX_DOCUMENT_BYTES", DEFAULT_MAX_DOCUMENT_BYTES))


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, "Invalid request.", details={field: [message]})


# --- checks (pure apart from the document type lookup) ----------------------------------


def check_external_id(external_id: str) -> str:
    external_id = external_id.strip()
    if not external_id:
        raise _invalid("external_id", "This field may not be blank.")
    if "/" in external_id or _CONTROL.search(external_id):
        raise _invalid("external_id", "May not contain '/' or control characters.")
    return external_id


def check_path(path: str) -> str:
    """A document path, normalised: forward slashes, no leading ``./`` or ``/``."""
    path = path.strip().replace("\\", "/")
    while path.startswith(("./", "/")):
        path = path[2:] if path.startswith("./") else path[1:]
    if not path:
        raise _invalid("path", "This field may not be blank.")
    if _CONTROL.search(path):
        raise _invalid("path", "May not contain control characters.")
    return path


def check_content(content: str) -> str:
    if not content.strip():
        raise _invalid("content", "The document is empty.")
    if "\x00" in content:
        raise _invalid("content", "Text only: the content contains NUL characters.")
    size, limit = len(content.encode("utf-8")), max_document_bytes()
    if size > limit:
        raise DocumentTooLarge(size, limit)
    return content


def check_document_type(document_type: str | None) -> str:
    code = (document_type or "UNSORTED").strip().upper()
    codes = selectors.document_type_codes()
    if code not in codes:
        raise _invalid("document_type", f"Unknown document type; one of: {', '.join(codes)}.")
    return code


def check_language(language: str | None) -> str:
    language = (language or DEFAULT_LANGUAGE).strip().lower()
    if language not in LANGUAGES:
        raise _invalid("language", f"One of: {', '.join(LANGUAGES)}.")
    return language


# --- projects ----------------------------------------------------------------------------


def project_create(*, tenant: Tenant, external_id: str, name: str = "") -> Project:
    external_id = check_external_id(external_id)
    try:
        with transaction.atomic():
            return Project.objects.create(tenant=tenant, external_id=external_id, name=name)
    except IntegrityError:
        raise _invalid("external_id", "A project with this id already exists.") from None


def project_get_or_create(*, tenant: Tenant, external_id: str) -> Project:
    """The tenant's project of that external id, created (named after it) when missing."""
    external_id = check_external_id(external_id)
    try:
        with transaction.atomic():
            project, _ = Project.objects.get_or_create(
                tenant=tenant, external_id=external_id, defaults={"name": external_id}
            )
            return project
    except IntegrityError:  # created concurrently
        return Project.objects.get(tenant=tenant, external_id=external_id)


def project_delete(*, project: Project) -> None:
    """Delete a project with its documents and chunks (database cascade)."""
    project.delete()


# --- documents ---------------------------------------------------------------------------


def document_store(
    *,
    project: Project,
    path: str,
    content: str,
    document_type: str | None = None,
    language: str | None = None,
) -> tuple[Document, bool]:
    """Store a document (replacing the one at the same path), chunk and index it, in one
    transaction. Returns (document, created)."""
    path = check_path(path)
    content = check_content(content)
    document_type = check_document_type(document_type)
    language = check_language(language)
    chunks = chunk_document(content)
    fields = {
        "document_type": document_type,
        "content": content,
        "language": language,
        "size_bytes": len(content.encode("utf-8")),
    }
    with transaction.atomic():
        document, created = _document_upsert(project=project, path=path, fields=fields)
        if not created:
            DocumentChunk.objects.filter(document=document).delete()
        backend = search.get_backend()
        DocumentChunk.objects.bulk_create(
            DocumentChunk(
                document=document,
                project=project,
                ordinal=ordinal,
                text=chunk.text,
                token_count=chunk.token_count,
                search_vector=backend.vector(document=document, text=chunk.text),
            )
            for ordinal, chunk in enumerate(chunks)
        )
    document.chunk_count = len(chunks)  # type: ignore[attr-defined]  # as the selectors annotate it
    return document, created


def _document_upsert(*, project: Project, path: str, fields: dict) -> tuple[Document, bool]:
    document = Document.objects.select_for_update().filter(project=project, path=path).first()
    if document is None:
        try:
            with transaction.atomic():
                return Document.objects.create(project=project, path=path, **fields), True
        except IntegrityError:  # stored concurrently: replace that one
            document = Document.objects.select_for_update().get(project=project, path=path)
    for name, value in fields.items():
        setattr(document, name, value)
    document.save(update_fields=[*fields, "updated_at"])
    return document, False


def document_delete(*, document: Document) -> None:
    """Delete a document; its chunks (and their index entries) go with it."""
    document.delete()


def document_save_generated(
    *,
    tenant: Tenant,
    project_external_id: str,
    path: str,
    document_type: str | None,
    content: str,
) -> tuple[Document, bool]:
    """Store a generated document in the project's knowledge base (the SSE endpoint's
    ``metadata.save_as``). The project is created when the tenant has none of that id;
    a document at the same path is replaced. Sync (database); raises ApiError
    (VALIDATION_ERROR, or DocumentTooLarge with status 413) on bad input.

    An unknown document type is stored as UNSORTED rather than refused: the text is
    already generated and worth keeping.
    """
    project = project_get_or_create(tenant=tenant, external_id=project_external_id or "")
    code = (document_type or "UNSORTED").strip().upper()
    if code not in selectors.document_type_codes():
        code = "UNSORTED"
    return document_store(project=project, path=path, content=content, document_type=code)


# --- document generation ------------------------------------------------------------------


def generation_context(
    *,
    tenant: Tenant,
    query: str,
    project_id: str | None,
    document_type: str,
    budget_tokens: int,
    user_name: str | None = None,
    existing_documents: dict[str, str] | None = None,
) -> RetrievedContext:
    """The system prompt of a document generation, at most ``budget_tokens`` long (what
    the model leaves after the conversation). Sync (database); raises
    ApiError(RAG_RETRIEVAL_ERROR) when the knowledge base fails."""
    try:
        return build_context(
            tenant=tenant,
            project_id=project_id,
            query=query,
            document_type=document_type,
            user_name=user_name,
            existing_documents=existing_documents or {},
            budget_tokens=max(0, budget_tokens),
        )
    except RetrievalError as exc:
        raise ApiError(
            ErrorCode.RAG_RETRIEVAL_ERROR, f"The knowledge base search failed: {exc}"
        ) from None


def generated_answer_keep(
    *,
    tenant: Tenant,
    project_external_id: str,
    path: str,
    document_type: str | None,
    content: str,
) -> dict[str, Any]:
    """Store a generated answer at ``path`` in the project's knowledge base, so later
    generations see it, and say how that went. The answer is delivered either way: a
    refusal (too large, a bad path) is reported, not raised. Sync (database)."""
    try:
        document, created = document_save_generated(
            tenant=tenant,
            project_external_id=project_external_id,
            path=path,
            document_type=document_type,
            content=content,
        )
    except ApiError as error:
        return {"path": path, "saved": False, "error": error.message}
    return {"path": path, "saved": True, "id": str(document.pk), "created": created}
