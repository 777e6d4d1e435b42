import uuid

import pytest

from knowledge.models import Document, DocumentChunk, Project
from tests.knowledge.helpers import error_of, store

pytestmark = pytest.mark.django_db

DOC = {"path": "ARCHITECTURE.md", "content": "# Architecture\n\nThe api talks to PostgreSQL."}


def create_project(api, external_id="proj-1", name="Harbor"):
    response = api.post(
        "/api/v1/projects", {"external_id": external_id, "name": name}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def upload(api, project_id="proj-1", **body):
    return api.post(f"/api/v1/projects/{project_id}/documents", {**DOC, **body}, format="json")


# --- projects ---------------------------------------------------------------------------


def test_create_project(api, tenant):
    body = create_project(api)
    assert body["external_id"] == "proj-1"
    assert body["name"] == "Harbor"
    assert body["document_count"] == 0
    assert Project.objects.get(pk=body["id"]).tenant == tenant


def test_create_project_twice_is_a_validation_error(api):
    create_project(api)
    response = api.post("/api/v1/projects/", {"external_id": "proj-1"}, format="json")
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert "external_id" in error["details"]


def test_two_tenants_may_use_the_same_project_id(api, other_api):
    create_project(api)
    create_project(other_api)
    assert Project.objects.filter(external_id="proj-1").count() == 2


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"external_id": ""},
        {"external_id": 12},
        {"external_id": "a/b"},
        {"external_id": "x" * 300},
    ],
)
def test_bad_project_body_is_a_validation_error(api, body):
    error = error_of(api.post("/api/v1/projects", body, format="json"), 400, "VALIDATION_ERROR")
    assert "external_id" in error["details"]


def test_list_projects_is_scoped_and_paged(api, other_api):
    for i in range(3):
        create_project(api, external_id=f"p{i}")
    create_project(other_api, external_id="theirs")
    body = api.get("/api/v1/projects?limit=2").json()
    assert body["total"] == 3
    assert body["has_more"] is True
    assert len(body["projects"]) == 2
    assert "theirs" not in {p["external_id"] for p in body["projects"]}


def test_get_project_by_external_id_or_uuid(api, project):
    store(project, "a.md", "alpha")
    by_external = api.get("/api/v1/projects/proj-1").json()
    by_uuid = api.get(f"/api/v1/projects/{project.pk}/").json()
    assert by_external == by_uuid
    assert by_external["document_count"] == 1


def test_delete_project_takes_documents_and_chunks(api, project):
    store(project, "a.md", "alpha")
    assert api.delete("/api/v1/projects/proj-1").status_code == 204
    assert not Document.objects.exists()
    assert not DocumentChunk.objects.exists()
    error_of(api.get("/api/v1/projects/proj-1"), 404, "NOT_FOUND")


def test_another_tenants_project_is_not_found(other_api, project):
    for response in (
        other_api.get("/api/v1/projects/proj-1"),
        other_api.get(f"/api/v1/projects/{project.pk}"),
        other_api.delete("/api/v1/projects/proj-1"),
        other_api.get("/api/v1/projects/proj-1/documents"),
        upload(other_api),
    ):
        assert error_of(response, 404, "NOT_FOUND")["message"] == "Project not found."
    assert Project.objects.filter(pk=project.pk).exists()


def test_missing_project_answers_like_a_foreign_one(api):
    error = error_of(upload(api, project_id="nope"), 404, "NOT_FOUND")
    assert error["message"] == "Project not found."


def test_no_key_is_unauthorized(client_for, project):
    error_of(client_for(None).get("/api/v1/projects"), 401, "UNAUTHORIZED")


# --- documents --------------------------------------------------------------------------


def test_upload_stores_chunks_and_answers_201(api, project):
    response = upload(api, document_type="architecture_spec")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["path"] == "ARCHITECTURE.md"
    assert body["document_type"] == "ARCHITECTURE_SPEC"
    assert body["size_bytes"] == len(DOC["content"].encode())
    assert body["chunk_count"] == 1
    assert "content" not in body
    chunk = DocumentChunk.objects.get(document_id=body["id"])
    assert chunk.text == DOC["content"]
    assert chunk.project_id == project.pk


def test_upload_to_the_same_path_replaces_the_document(api, project):
    first = upload(api).json()
    response = upload(api, content="# New\n\nReplaced text.")
    assert response.status_code == 200
    assert response.json()["id"] == first["id"]
    assert list(DocumentChunk.objects.values_list("text", flat=True)) == ["# New\n\nReplaced text."]


def test_upload_normalises_the_path(api, project):
    assert upload(api, path="./docs\\ARCH.md").json()["path"] == "docs/ARCH.md"


def test_default_document_type_is_unsorted(api, project):
    assert upload(api).json()["document_type"] == "UNSORTED"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "  \n\n "}, "content"),
        ({"content": None}, "content"),
        ({"content": 42}, "content"),
        ({"content": "nul\x00byte"}, "content"),
        ({"path": ""}, "path"),
        ({"path": "/"}, "path"),
        ({"path": "a\x07b"}, "path"),
        ({"document_type": "NOT_A_TYPE"}, "document_type"),
        ({"language": "klingon"}, "language"),
    ],
)
def test_bad_document_is_a_validation_error(api, project, body, field):
    error = error_of(upload(api, **body), 400, "VALIDATION_ERROR")
    assert field in error["details"]
    assert not Document.objects.exists()


def test_empty_document_says_so(api, project):
    error = error_of(upload(api, content=""), 400, "VALIDATION_ERROR")
    assert error["details"]["content"] == ["The document is empty."]


def test_missing_fields_are_named(api, project):
    response = api.post("/api/v1/projects/proj-1/documents", {}, format="json")
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert set(error["details"]) == {"path", "content"}


def test_document_over_the_limit_is_413(api, project, settings):
    settings.KNOWLEDGE_MAX_DOCUMENT_BYTES = 1000
    error = error_of(upload(api, content="é" * 501), 413, "VALIDATION_ERROR")  # 1002 bytes
    assert "1002 bytes" in error["message"]
    assert "at most 1000 bytes" in error["message"]
    assert not Document.objects.exists()


def test_document_at_the_limit_is_accepted(api, project, settings):
    settings.KNOWLEDGE_MAX_DOCUMENT_BYTES = 1000
    assert upload(api, content="é" * 500).status_code == 201


def test_default_limit_is_one_mebibyte(api, project):
    assert upload(api, content="a" * (1024 * 1024)).status_code == 201
    error_of(upload(api, path="b.md", content="a" * (1024 * 1024 + 1)), 413, "VALIDATION_ERROR")


def test_huge_body_is_refused_before_it_is_parsed(api, project, settings):
    settings.KNOWLEDGE_MAX_DOCUMENT_BYTES = 10
    response = api.post(
        "/api/v1/projects/proj-1/documents",
        '{"path": "a.md", "content": "' + "a" * 200_000 + '"}',
        content_type="application/json",
    )
    error_of(response, 413, "VALIDATION_ERROR")


def test_not_json_is_a_validation_error(api, project):
    response = api.post(
        "/api/v1/projects/proj-1/documents", "{not json", content_type="application/json"
    )
    error_of(response, 400, "VALIDATION_ERROR")


def test_list_documents_without_content(api, project):
    store(project, "b.md", "bravo")
    store(project, "a.md", "alpha")
    body = api.get("/api/v1/projects/proj-1/documents").json()
    assert [d["path"] for d in body["documents"]] == ["a.md", "b.md"]
    assert all("content" not in d for d in body["documents"])
    assert body["total"] == 2


def test_get_document_with_content(api, project):
    document = store(project, "a.md", "alpha text")
    body = api.get(f"/api/v1/projects/proj-1/documents/{document.pk}").json()
    assert body["content"] == "alpha text"
    assert body["chunk_count"] == 1


def test_delete_document(api, project):
    document = store(project, "a.md", "alpha")
    assert api.delete(f"/api/v1/projects/proj-1/documents/{document.pk}").status_code == 204
    assert not DocumentChunk.objects.exists()
    error_of(api.get(f"/api/v1/projects/proj-1/documents/{document.pk}"), 404, "NOT_FOUND")


def test_document_of_another_project_is_not_found(api, tenant, project):
    other = Project.objects.create(tenant=tenant, external_id="proj-2")
    document = store(other, "a.md", "alpha")
    error_of(api.get(f"/api/v1/projects/proj-1/documents/{document.pk}"), 404, "NOT_FOUND")
    error_of(api.delete(f"/api/v1/projects/proj-1/documents/{document.pk}"), 404, "NOT_FOUND")


def test_document_of_another_tenant_is_not_found(other_api, project):
    document = store(project, "a.md", "alpha")
    url = f"/api/v1/projects/{project.pk}/documents/{document.pk}"
    error_of(other_api.get(url), 404, "NOT_FOUND")
    error_of(other_api.delete(url), 404, "NOT_FOUND")
    assert Document.objects.filter(pk=document.pk).exists()


def test_bad_document_id_is_a_validation_error(api, project):
    error_of(api.get("/api/v1/projects/proj-1/documents/nope"), 400, "VALIDATION_ERROR")
    error_of(api.get(f"/api/v1/projects/proj-1/documents/{uuid.uuid4()}"), 404, "NOT_FOUND")
