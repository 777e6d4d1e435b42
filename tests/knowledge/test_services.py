import pytest
from django.db import connection

from chatproject.errors import ApiError
from knowledge import search, services
from knowledge.models import Document, DocumentChunk, Project
from knowledge.services import DocumentTooLarge, document_save_generated

pytestmark = pytest.mark.django_db


def save(tenant, **kwargs):
    arguments = {
        "tenant": tenant,
        "project_external_id": "proj-1",
        "path": "ARCHITECTURE.md",
        "document_type": "ARCHITECTURE_SPEC",
        "content": "# Architecture\n\nGenerated text about queues.",
        **kwargs,
    }
    return document_save_generated(**arguments)


def test_save_generated_stores_a_searchable_document(tenant, project):
    document, created = save(tenant)
    assert created
    assert (document.project, document.document_type) == (project, "ARCHITECTURE_SPEC")
    hits = search.get_backend().search(project=project, query="queues", limit=5)
    assert [h.chunk_id for h in hits] == list(document.chunks.values_list("id", flat=True))


def test_save_generated_creates_the_project_when_missing(tenant):
    document, _ = save(tenant, project_external_id="new-project")
    project = Project.objects.get(tenant=tenant, external_id="new-project")
    assert document.project == project
    assert project.name == "new-project"


def test_save_generated_replaces_the_document_at_that_path(tenant, project):
    first, _ = save(tenant)
    second, created = save(tenant, content="# Architecture\n\nVersion two.")
    assert not created
    assert second.pk == first.pk
    assert Document.objects.get(pk=first.pk).content == "# Architecture\n\nVersion two."
    assert DocumentChunk.objects.filter(document=first).count() == 1


def test_save_generated_stays_in_the_tenant(tenant, other_tenant, project):
    save(other_tenant)
    assert not Document.objects.filter(project=project).exists()
    assert Project.objects.get(tenant=other_tenant, external_id="proj-1").documents.count() == 1


def test_save_generated_keeps_an_unknown_type_as_unsorted(tenant, project):
    document, _ = save(tenant, document_type="API_REFERENCE")
    assert document.document_type == "UNSORTED"


def test_save_generated_refuses_oversized_content_with_413(tenant, project, settings):
    settings.KNOWLEDGE_MAX_DOCUMENT_BYTES = 10
    with pytest.raises(DocumentTooLarge) as raised:
        save(tenant)
    assert raised.value.status == 413
    assert not Document.objects.exists()


@pytest.mark.parametrize(
    "changes",
    [{"content": "  "}, {"path": ""}, {"project_external_id": ""}, {"project_external_id": "a/b"}],
)
def test_save_generated_refuses_bad_input(tenant, changes):
    with pytest.raises(ApiError) as raised:
        save(tenant, **changes)
    assert raised.value.code == "VALIDATION_ERROR"
    assert not Document.objects.exists()


def test_chunks_are_indexed_in_the_same_write(project):
    document, _ = services.document_store(project=project, path="a.md", content="indexed words")
    chunk = DocumentChunk.objects.get(document=document)
    if connection.vendor == "postgresql":
        assert chunk.search_vector is not None
    else:
        with connection.cursor() as cursor:
            cursor.execute("SELECT body FROM knowledge_chunk_fts WHERE rowid = %s", [chunk.pk])
            assert cursor.fetchone() == ("indexed words",)


def test_a_failed_store_leaves_nothing_behind(project, monkeypatch):
    class Boom(Exception):
        pass

    def explode(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(DocumentChunk.objects, "bulk_create", explode)
    with pytest.raises(Boom):
        services.document_store(project=project, path="a.md", content="text")
    assert not Document.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_stores_at_one_path_leave_one_whole_document(project):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    contents = [f"# Version {i}\n\n" + f"word{i} " * 900 for i in range(4)]

    def store_version(content: str) -> bool:
        try:
            _, created = services.document_store(project=project, path="a.md", content=content)
            return created
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=4) as pool:
        created = list(pool.map(store_version, contents))

    assert created.count(True) == 1
    document = Document.objects.get(project=project, path="a.md")
    chunks = list(DocumentChunk.objects.filter(document=document).order_by("ordinal"))
    assert len(chunks) > 1
    version = document.content.split("\n")[0]
    assert all(c.text.startswith(version) for c in chunks)  # no chunk of another version


# --- what a document generation asks of the knowledge base ------------------------------


def test_a_kept_answer_is_reported_with_its_document(tenant, project):
    report = services.generated_answer_keep(
        tenant=tenant,
        project_external_id="proj-1",
        path="NOTES.md",
        document_type="ARCHITECTURE_SPEC",
        content="Kept text.",
    )
    document = Document.objects.get(project=project, path="NOTES.md")
    assert report == {"path": "NOTES.md", "saved": True, "id": str(document.pk), "created": True}


def test_a_refused_answer_is_reported_not_raised(tenant, project, settings):
    settings.KNOWLEDGE_MAX_DOCUMENT_BYTES = 5
    report = services.generated_answer_keep(
        tenant=tenant,
        project_external_id="proj-1",
        path="NOTES.md",
        document_type=None,
        content="Far too long for the limit.",
    )
    assert report["saved"] is False and "at most 5 bytes" in report["error"]
    assert not Document.objects.exists()


def test_generation_context_names_what_the_client_put_in_and_what_was_retrieved(tenant, project):
    services.document_store(project=project, path="QUEUES.md", content="Queues hold jobs.")
    context = services.generation_context(
        tenant=tenant,
        query="queues",
        project_id="proj-1",
        document_type="ARCHITECTURE_SPEC",
        budget_tokens=2000,
        user_name="Ada",
        existing_documents={"README.md": "hello"},
    )
    assert ("knowledge base: QUEUES.md", "Queues hold jobs.") in context.folded
    assert context.client_parts == [
        ("user_name", "Ada"),
        ("existing_documents: README.md", "README.md\nhello"),
    ]


def test_a_failed_search_is_a_rag_retrieval_error(tenant, project, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("index gone")

    monkeypatch.setattr(services.search, "get_backend", broken)
    with pytest.raises(ApiError) as raised:
        services.generation_context(
            tenant=tenant,
            query="queues",
            project_id="proj-1",
            document_type="UNSORTED",
            budget_tokens=100,
        )
    assert raised.value.code == "RAG_RETRIEVAL_ERROR"
    assert raised.value.retryable
