"""Offset pagination, the way every list endpoint asks and answers."""

from django.db.models import QuerySet
from rest_framework import serializers

from chatproject.fields import StrictIntegerField

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
MAX_OFFSET = 2**31 - 1  # past any list's end; larger values overflow the database's integers


class PageQuerySerializer(serializers.Serializer):
    offset = StrictIntegerField(min_value=0, max_value=MAX_OFFSET, default=0)
    limit = StrictIntegerField(min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)


def page_serializer(name: str, key: str, item_serializer) -> type[serializers.Serializer]:
    """The serializer of ``{key: [...], total, offset, limit, has_more}`` (for the schema)."""
    fields = {
        key: item_serializer(many=True),
        "total": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
        "limit": serializers.IntegerField(),
        "has_more": serializers.BooleanField(),
    }
    return type(name, (serializers.Serializer,), fields)


def offset_page(queryset: QuerySet, *, offset: int, limit: int, key: str, serializer_class) -> dict:
    """``{key: [...], total, offset, limit, has_more}`` for one page of ``queryset``."""
    total = queryset.count()
    items = list(queryset[offset : offset + limit])
    return {
        key: serializer_class(items, many=True).data,
        "total": total,
        "offset": offset,
        "limit": limit,
        "has_more": offset + len(items) < total,
    }
