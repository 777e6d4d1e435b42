"""Request body parsing for the REST API."""

from rest_framework.parsers import JSONParser

from chatproject.json_body import parse_json


class BoundedJSONParser(JSONParser):
    """JSON read by the product's one reader (:func:`chatproject.json_body.parse_json`):
    depth bounded before parsing, no NaN, no NUL or unpaired surrogates. DRF reads
    ``request.body`` before calling a parser, so a body over the size limit is refused
    there (``RequestDataTooBig``, answered with 413 by the exception handler)."""

    def parse(self, stream, media_type=None, parser_context=None):
        return parse_json(stream.read())
