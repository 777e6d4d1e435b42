"""Request body parsing for the REST API."""

from django.conf import settings
from rest_framework.parsers import JSONParser

from chatproject.errors import PayloadTooLarge


class BoundedJSONParser(JSONParser):
    """JSON, refused with 413 past ``DATA_UPLOAD_MAX_MEMORY_SIZE``: DRF reads the body
    stream itself, so Django's own size check on ``request.body`` never runs."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request else 0
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            raise PayloadTooLarge(
                f"The request body is {length} bytes; at most {limit} are accepted.",
                limit=limit,
            )
        return super().parse(stream, media_type, parser_context)
