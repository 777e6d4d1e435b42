"""Offset pagination, the way every list endpoint answers."""

from django.db.models import QuerySet


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
