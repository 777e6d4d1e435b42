"""Context for document generation: the project's knowledge base and the document type's
template, assembled into a system prompt (see ``knowledge.prompt`` for the budget rule)."""

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

from django.db import connection, transaction

from billing.models import Tenant
from knowledge import prompt, search, selectors
from knowledge.models import Project

logger = logging.getLogger(__name__)

# Candidates fetched per search: more than TOP_K so that chunks too big for what is left
# of the budget can give way to smaller ones.
CANDIDATES = prompt.TOP_K * 2


class RetrievalError(Exception):
    """The knowledge-base search failed (answered as RAG_RETRIEVAL_ERROR)."""


@dataclass(frozen=True)
class RetrievedChunk:
    source: str  # the document's path or title, named in the prompt
    document_type: str
    text: str
    score: float


@dataclass(frozen=True)
class RetrievedContext:
    system_prompt: str
    chunks: list[RetrievedChunk] = field(default_factory=list)
    document_types_used: list[str] = field(default_factory=list)
    project_found: bool | None = None  # None: no project was asked for
    # What the client put into the prompt (its name, its documents), as (source, text).
    client_parts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def folded(self) -> list[tuple[str, str]]:
        """The knowledge-base chunks in the prompt, as (source, text)."""
        return [(f"knowledge base: {chunk.source}", chunk.text) for chunk in self.chunks]


def build_context(
    *,
    tenant: Tenant,
    project_id: str | None,
    query: str,
    document_type: str,
    user_name: str | None,
    existing_documents: dict[str, str],
    budget_tokens: int,
) -> RetrievedContext:
    """The system prompt for one generation. Sync (database); raises RetrievalError.

    ``project_id`` is the tenant's external id for the project (or its UUID). No project
    (None, unknown, another tenant's) means no knowledge-base chunks, not an error. An
    unknown ``document_type`` gets the UNSORTED template; the prompt and
    ``document_types_used`` still name the type requested.
    """
    requested = prompt.clean_type_code(document_type)
    try:
        # Inside a caller's transaction, a savepoint keeps a failed query from breaking it.
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            doc_type = selectors.document_type_for(requested)
            project = selectors.project_find(tenant=tenant, project_id=project_id)
            candidates = _search(project=project, query=query)
    except Exception as exc:
        logger.exception("knowledge-base retrieval failed")
        raise RetrievalError("the project's search index could not be queried") from exc

    text, used = prompt.compose(
        document_type=doc_type,
        requested_type=requested,
        user_name=user_name,
        query=query,
        excerpts=candidates,
        existing_documents=existing_documents or {},
        budget_tokens=budget_tokens,
    )
    types = list(dict.fromkeys([requested, *(e.document_type for e in used)]))
    chunks = [RetrievedChunk(e.source, e.document_type, e.text, e.score) for e in used]
    return RetrievedContext(
        system_prompt=text,
        chunks=chunks,
        document_types_used=types,
        project_found=(project is not None) if project_id else None,
        client_parts=_client_parts(user_name, existing_documents),
    )


def _client_parts(user_name: str | None, documents: dict[str, str]) -> list[tuple[str, str]]:
    parts = [("user_name", user_name or "")]
    parts += [
        (f"existing_documents: {path}", f"{path}\n{content}") for path, content in documents.items()
    ]
    return parts


def search_knowledge(
    *, tenant: Tenant, project_id: str | None, query: str, limit: int
) -> list[prompt.Excerpt]:
    """The project's best ``limit`` passages for ``query`` (none for an unknown project).
    Sync (database); raises RetrievalError."""
    try:
        project = selectors.project_find(tenant=tenant, project_id=project_id)
        return _search(project=project, query=query)[:limit]
    except Exception as exc:
        logger.exception("knowledge-base search failed")
        raise RetrievalError("the project's search index could not be queried") from exc


def _search(*, project: Project | None, query: str) -> list[prompt.Excerpt]:
    if project is None or not query.strip():
        return []
    hits = search.get_backend().search(project=project, query=query, limit=CANDIDATES)
    chunks = selectors.chunks_by_id([hit.chunk_id for hit in hits])
    return [
        prompt.Excerpt(
            source=chunk.document.path,
            document_type=chunk.document.document_type,
            text=chunk.text,
            score=hit.score,
        )
        for hit in hits
        # The backend scopes to the project; checked again so no bug can leak another's.
        if (chunk := chunks.get(hit.chunk_id)) is not None and chunk.project_id == project.pk
    ]
