"""Building blocks of the OpenAPI description of the plain Django views.

Each wire format describes itself: its request bodies next to their parsers
(``chats.transports.schemas``), its paths and answers in its transport module, as a
:class:`Fragment`. ``chatproject.openapi`` only assembles the fragments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]
API_KEY: list[dict[str, list[str]]] = [{"ApiKeyAuth": []}]
KEEPALIVE_NOTE = "While the model is silent the server sends `: keep-alive` comment lines."


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Schema, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def string(
    *,
    max_length: int | None = None,
    choices: tuple[str, ...] | None = None,
    blank: bool = True,
    **extra: Any,
) -> Schema:
    """A string, described with the arguments the parser's ``readers.string`` reader takes."""
    schema: Schema = {"type": "string", **extra}
    if max_length is not None:
        schema["maxLength"] = max_length
    if choices is not None:
        schema["enum"] = list(choices)
    if not blank:
        schema["minLength"] = 1
    return schema


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


@dataclass(frozen=True)
class RequestBody:
    """A JSON request body: its component name, the parser that reads it, the schema
    built from that parser's constants, and examples the parser accepts."""

    name: str
    parse: Callable[[dict[str, Any]], Any]
    schema: Callable[[], Schema]
    examples: dict[str, dict[str, Any]]

    def content(self) -> Schema:
        examples = {key: {"value": value} for key, value in self.examples.items()}
        return {"application/json": {"schema": ref(self.name), "examples": examples}}


@dataclass
class Fragment:
    """What one wire format adds to the description."""

    paths: dict[str, Schema]
    requests: tuple[RequestBody, ...] = ()
    schemas: dict[str, Schema] = field(default_factory=dict)


# --- Responses -----------------------------------------------------------------------------

RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "The plan's burst."},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
    "X-RateLimit-Reset": {
        "schema": {"type": "integer"},
        "description": "Seconds until the allowance is full again.",
    },
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}

# What each failure usually means; an endpoint may say otherwise for its own statuses.
ERROR_MEANINGS = {
    400: "Invalid body or parameters (`details` names each field), or an unknown model.",
    401: "Missing, unknown, revoked or expired key.",
    402: "The balance cannot cover the request.",
    403: "The governor did not approve the request.",
    404: "No such model.",
    405: "Method not allowed.",
    413: "The request body is over its size limit.",
    422: "Invalid body (`details` names each field).",
    429: "The plan's rate limit (or, on /v1, the provider's own 429).",
    502: "The provider failed: unreachable, or it answered an error (streams: before the "
    "first token; after it the stream carries an error event).",
    503: "The database is down for now (SERVICE_UNAVAILABLE): retry after `Retry-After`.",
    504: "The provider did not answer in time.",
}


def errors(schema: str, statuses: Mapping[int, str | None]) -> dict[str, Schema]:
    """The error responses ``statuses`` (a meaning, or None for the usual one), and 503,
    which every endpoint may answer while the database is down."""
    responses = {}
    for status, meaning in {**statuses, 503: None}.items():
        response: Schema = {
            "description": meaning or ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": ref(schema)}},
        }
        if status == 429:
            response["headers"] = {**RETRY_AFTER, **RATE_HEADERS}
        elif status == 503:
            response["headers"] = RETRY_AFTER
        responses[str(status)] = response
    return responses


def stream(description: str) -> Schema:
    return {
        "description": f"{description} {KEEPALIVE_NOTE}",
        "headers": RATE_HEADERS,
        "content": {"text/event-stream": {"schema": string()}},
    }


def json_response(schema: str, description: str = "OK") -> Schema:
    return {
        "description": description,
        "headers": RATE_HEADERS,
        "content": {"application/json": {"schema": ref(schema)}},
    }


def operation(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    body: RequestBody | None = None,
    security: list[dict[str, list[str]]] | None = None,
    **extra: Any,
) -> Schema:
    schema: Schema = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": security or API_KEY,
        "responses": responses,
        **extra,
    }
    if body is not None:
        schema["requestBody"] = {"required": True, "content": body.content()}
    return schema


def path_parameter(name: str, description: str) -> Schema:
    return {
        "in": "path",
        "name": name,
        "required": True,
        "schema": string(),
        "description": description,
    }
