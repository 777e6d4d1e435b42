"""Chat management REST API: parse, call a selector or service, encode."""

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from billing.authentication import request_tenant
from chatproject.pagination import PageQuerySerializer, offset_page
from chats import selectors, services
from chats.api import serializers as s


def _page(queryset: QuerySet, query: dict, key: str, serializer_class) -> dict:
    return offset_page(
        queryset,
        offset=query["offset"],
        limit=query["limit"],
        key=key,
        serializer_class=serializer_class,
    )


def _query(serializer_class, request: Request) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


PAGE_PARAMS = [
    OpenApiParameter("offset", int, description="Items to skip (default 0)."),
    OpenApiParameter("limit", int, description="Items to return (default 50, max 200)."),
]


class ChatViewSet(viewsets.ViewSet):
    @extend_schema(request=s.ChatCreateSerializer, responses={201: s.ChatSerializer})
    def create(self, request: Request) -> Response:
        serializer = s.ChatCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        chat, _ = services.chat_create(tenant=request_tenant(request), **serializer.validated_data)
        return Response(s.ChatSerializer(chat).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.ChatSerializer)
    def retrieve(self, request: Request, chat_id: str) -> Response:
        chat = selectors.chat_detail(tenant=request_tenant(request), chat_id=chat_id)
        return Response(s.ChatSerializer(chat).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, chat_id: str) -> Response:
        chat = selectors.chat_get(tenant=request_tenant(request), chat_id=chat_id)
        services.chat_delete(chat=chat)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[
            *PAGE_PARAMS,
            OpenApiParameter("order", str, enum=["asc", "desc"], description="Default asc."),
        ],
        responses=s.MessagePageSerializer,
    )
    def messages(self, request: Request, chat_id: str) -> Response:
        query = _query(s.MessagePageQuerySerializer, request)
        chat = selectors.chat_get(tenant=request_tenant(request), chat_id=chat_id)
        messages = selectors.message_list(chat=chat, descending=query["order"] == "desc")
        return Response(_page(messages, query, "messages", s.MessageSerializer))

    @extend_schema(parameters=PAGE_PARAMS, responses=s.ChatPageSerializer)
    def user(self, request: Request, user_id: str) -> Response:
        query = _query(PageQuerySerializer, request)
        chats = selectors.chat_list_for_user(tenant=request_tenant(request), user_id=user_id)
        return Response(_page(chats, query, "chats", s.ChatSerializer))
