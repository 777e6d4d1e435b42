"""Projects and documents REST API: parse, call a selector or service, encode.

``{project_id}`` in a path is the tenant's own id for the project (``external_id``, what
clients send as ``project_id`` to ``/api/v1/chat/stream``); the project's UUID works too.
"""

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from billing.authentication import request_tenant
from chatproject.pagination import PageQuerySerializer, offset_page
from knowledge import selectors, services
from knowledge import serializers as s

PAGE_PARAMS = [
    OpenApiParameter("offset", int, description="Items to skip (default 0)."),
    OpenApiParameter("limit", int, description="Items to return (default 50, max 200)."),
]

# A JSON body may escape each byte of content into up to six (\uXXXX); a body larger
# than that for the limit cannot hold an acceptable document, and is refused unread.
_JSON_OVERHEAD = 6


def _page(queryset: QuerySet, request: Request, key: str, serializer_class) -> dict:
    query = PageQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return offset_page(
        queryset,
        offset=query.validated_data["offset"],
        limit=query.validated_data["limit"],
        key=key,
        serializer_class=serializer_class,
    )


def _content_length(request: Request) -> int:
    try:
        return int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return 0  # the parser reads what is there


class ProjectViewSet(viewsets.ViewSet):
    @extend_schema(request=s.ProjectCreateSerializer, responses={201: s.ProjectSerializer})
    def create(self, request: Request) -> Response:
        serializer = s.ProjectCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = services.project_create(
            tenant=request_tenant(request), **serializer.validated_data
        )
        project.document_count = 0  # type: ignore[attr-defined]  # as the selectors annotate it
        return Response(s.ProjectSerializer(project).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="v1_projects_list", parameters=PAGE_PARAMS, responses=s.ProjectPageSerializer
    )
    def page(self, request: Request) -> Response:
        projects = selectors.project_list(tenant=request_tenant(request))
        return Response(_page(projects, request, "projects", s.ProjectSerializer))

    @extend_schema(responses=s.ProjectSerializer)
    def retrieve(self, request: Request, project_id: str) -> Response:
        project = selectors.project_get(tenant=request_tenant(request), project_id=project_id)
        # as the selectors annotate it
        project.document_count = selectors.project_document_count(project=project)  # type: ignore[attr-defined]
        return Response(s.ProjectSerializer(project).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, project_id: str) -> Response:
        project = selectors.project_get(tenant=request_tenant(request), project_id=project_id)
        services.project_delete(project=project)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentViewSet(viewsets.ViewSet):
    @extend_schema(
        request=s.DocumentCreateSerializer,
        responses={
            201: s.DocumentSummarySerializer,
            200: OpenApiResponse(s.DocumentSummarySerializer, "Replaced the document at path."),
            413: OpenApiResponse(description="Over KNOWLEDGE_MAX_DOCUMENT_BYTES."),
        },
    )
    def create(self, request: Request, project_id: str) -> Response:
        project = selectors.project_get(tenant=request_tenant(request), project_id=project_id)
        limit = services.max_document_bytes()
        length = _content_length(request)
        if length > limit * _JSON_OVERHEAD + 65536:
            raise services.DocumentTooLarge(length, limit)
        serializer = s.DocumentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        document, created = services.document_store(project=project, **serializer.validated_data)
        return Response(
            s.DocumentSummarySerializer(document).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        operation_id="v1_projects_documents_list",
        parameters=PAGE_PARAMS,
        responses=s.DocumentPageSerializer,
    )
    def page(self, request: Request, project_id: str) -> Response:
        project = selectors.project_get(tenant=request_tenant(request), project_id=project_id)
        documents = selectors.document_list(project=project)
        return Response(_page(documents, request, "documents", s.DocumentSummarySerializer))

    @extend_schema(responses=s.DocumentSerializer)
    def retrieve(self, request: Request, project_id: str, document_id: str) -> Response:
        project = selectors.project_get(tenant=request_tenant(request), project_id=project_id)
        document = selectors.document_get(project=project, document_id=document_id)
        return Response(s.DocumentSerializer(document).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, project_id: str, document_id: str) -> Response:
        project = selectors.project_get(tenant=request_tenant(request), project_id=project_id)
        document = selectors.document_get(project=project, document_id=document_id)
        services.document_delete(document=document)
        return Response(status=status.HTTP_204_NO_CONTENT)
