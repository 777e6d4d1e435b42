from django.urls import re_path

from knowledge.api import DocumentViewSet, ProjectViewSet

# Like the chat API, every path is accepted with and without a trailing slash.
projects = ProjectViewSet.as_view({"get": "page", "post": "create"})
project_detail = ProjectViewSet.as_view({"get": "retrieve", "delete": "destroy"})
documents = DocumentViewSet.as_view({"get": "page", "post": "create"})
document_detail = DocumentViewSet.as_view({"get": "retrieve", "delete": "destroy"})

PROJECT = r"api/v1/projects/(?P<project_id>[^/]+)"

urlpatterns = [
    re_path(r"^api/v1/projects/?$", projects, name="project-list"),
    re_path(rf"^{PROJECT}/?$", project_detail, name="project-detail"),
    re_path(rf"^{PROJECT}/documents/?$", documents, name="document-list"),
    re_path(
        rf"^{PROJECT}/documents/(?P<document_id>[^/]+)/?$", document_detail, name="document-detail"
    ),
]
