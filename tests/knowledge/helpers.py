from knowledge import services
from knowledge.models import Document, Project


def store(project: Project, path: str, content: str, **kwargs) -> Document:
    document, _ = services.document_store(project=project, path=path, content=content, **kwargs)
    return document


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    return error
