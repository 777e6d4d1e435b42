"""OpenAPI post-processing: paths spelt as clients use them, the plain Django views' own
fragments (drf-spectacular cannot see those views), and the error envelope on the REST
operations."""

from typing import Any

from chatproject import openapi_fragments as oa
from chatproject.errors import error_schema

# Paths clients write with a trailing slash; every other path is shown without one (the
# URL patterns accept both).
SLASHED_PATHS = {"/api/v1/chats/"}


def path_spelling(result: oa.Schema, generator: Any, request: Any, public: bool) -> oa.Schema:
    result["paths"] = {
        (path if path in SLASHED_PATHS else path.rstrip("/")): item
        for path, item in result["paths"].items()
    }
    return result


def fragments() -> list[oa.Fragment]:
    """Every wire format's fragment, in the order of the URL configuration."""
    from chats.transports.urls import WIRE_FORMATS  # the views import the engine

    return [module.openapi() for module in WIRE_FORMATS]


def plain_view_paths(result: oa.Schema, generator: Any, request: Any, public: bool) -> oa.Schema:
    """Add the paths of the plain Django views, with their schemas and security."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = error_schema()
    paths = dict(result["paths"])
    for fragment in fragments():
        paths.update(fragment.paths)
        schemas.update(fragment.schemas)
        schemas.update({body.name: body.schema() for body in fragment.requests})
    security = components.setdefault("securitySchemes", {})
    security.setdefault("ApiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    security["BearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The tenant key, as OpenAI clients send it (only on /v1).",
    }
    result["paths"] = dict(sorted(paths.items()))
    return result


def rest_error_responses(
    result: oa.Schema, generator: Any, request: Any, public: bool
) -> oa.Schema:
    """Document the error envelope on the REST (DRF) operations: every one can answer
    400, 401 and 429; those with ids in the path 404; those that take a body 413. The
    operations of the plain views declare their own errors already."""
    for path, item in result["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if any(code.startswith("4") for code in operation.get("responses", {})):
                continue
            statuses: dict[int, str | None] = {400: None, 401: None, 429: None}
            if "{" in path:
                statuses[404] = "Not found for this tenant (another tenant's answers the same)."
            if "requestBody" in operation:
                statuses[413] = None
            responses = operation.setdefault("responses", {})
            for status, response in oa.errors("Error", statuses).items():
                responses.setdefault(status, response)
    return result
