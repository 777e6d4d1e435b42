import pytest

from knowledge import services
from knowledge.models import DocumentType, Project
from knowledge.templates_defaults import create_default_document_types
from tests.factories import make_key, make_tenant


@pytest.fixture(autouse=True)
def document_types(db):
    """The rows migration 0003 seeds; transactional tests flush them, so re-create them."""
    create_default_document_types(DocumentType)


@pytest.fixture
def project(tenant) -> Project:
    return services.project_create(tenant=tenant, external_id="proj-1", name="Harbor")


@pytest.fixture
def other_tenant(db):
    return make_tenant(name="other")


@pytest.fixture
def other_api(client_for, other_tenant):
    """A client of another tenant."""
    return client_for(make_key(other_tenant))
