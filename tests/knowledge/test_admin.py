import pytest

from knowledge.models import DocumentType
from tests.knowledge.helpers import store

pytestmark = pytest.mark.django_db


def test_admin_pages_render(admin_client, project):
    document = store(project, "a.md", "# A\n\nalpha")
    for url in (
        "/admin/knowledge/project/",
        f"/admin/knowledge/project/{project.pk}/change/",
        "/admin/knowledge/document/",
        f"/admin/knowledge/document/{document.pk}/change/",
        "/admin/knowledge/documenttype/",
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    detail = admin_client.get(f"/admin/knowledge/document/{document.pk}/change/")
    assert b"alpha" in detail.content  # the chunk, inline


def test_staff_edit_a_document_type_template(admin_client):
    document_type = DocumentType.objects.get(code="TECH_STACK")
    response = admin_client.post(
        f"/admin/knowledge/documenttype/{document_type.pk}/change/",
        {
            "code": "tech_stack",
            "name": "Technology stack",
            "description": "",
            "template": "## Layers",
            "example": "",
        },
    )
    assert response.status_code == 302, response.content
    document_type.refresh_from_db()
    assert (document_type.code, document_type.template) == ("TECH_STACK", "## Layers")


def test_a_duplicate_code_in_other_case_is_a_form_error(admin_client):
    response = admin_client.post(
        "/admin/knowledge/documenttype/add/",
        {"code": "tech_stack", "name": "Duplicate", "template": "", "example": ""},
    )
    assert response.status_code == 200  # the form again, with its error
    assert b"already exists" in response.content
    assert DocumentType.objects.filter(code="TECH_STACK").count() == 1
