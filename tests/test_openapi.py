"""The OpenAPI description at /api/schema/: the DRF views and the plain Django ones."""

import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from django.test import Client

from chatproject.errors import ApiError
from chatproject.openapi import fragments
from chats.catalog import DEFAULT_QUALITY, QUALITY_TIERS
from chats.models import LLMModel
from chats.transports.schemas.regpilot import REGPILOT_REQUEST

ROOT = Path(__file__).resolve().parent.parent

SSE_PATHS = ["/api/ai/chat", "/api/v1/chat/stream", "/api/v1/chat/generate", "/api/chat"]


@pytest.fixture(scope="module")
def schema() -> dict:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/api/ai/chat",
        "/api/ai/chat/complete",
        "/api/v1/chat/stream",
        "/api/v1/chat/generate",
        "/api/chat",
        "/v1/chat/completions",
        "/v1/models",
        "/api/governor/validate",
        "/api/v1/projects",
    ],
)
def test_schema_lists_the_path(schema, path):
    assert path in schema["paths"]


@pytest.mark.parametrize("path", SSE_PATHS)
def test_streams_are_described_as_event_streams_with_a_json_body(schema, path):
    operation = schema["paths"][path]["post"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert "data:" in operation["responses"]["200"]["description"]  # the event format
    assert "application/json" in operation["requestBody"]["content"]
    assert operation["security"] == [{"ApiKeyAuth": []}]


def test_refs_of_the_plain_views_resolve(schema):
    text = str(schema["paths"])
    names = {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}
    assert names <= set(schema["components"]["schemas"])


def test_openai_paths_take_a_bearer_key_and_answer_openais_errors(schema):
    bearer = schema["components"]["securitySchemes"]["BearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"BearerAuth": []} in operation["security"]
    limited = operation["responses"]["429"]
    assert "Retry-After" in limited["headers"]
    assert limited["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"
    }


def test_document_chat_errors_use_its_statuses(schema):
    responses = schema["paths"]["/api/v1/chat/stream"]["post"]["responses"]
    assert {"403", "422", "429"} <= set(responses)
    assert "401" not in responses


def test_spectacular_generates_without_warnings():
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--fail-on-warn",
            "--validate",
            "--file",
            os.devnull,
        ],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# --- The request bodies: each schema is built next to its parser; they must agree -------

REQUESTS = [body for fragment in fragments() for body in fragment.requests]
EXAMPLES = [
    pytest.param(body, name, id=f"{body.name}-{name}")
    for body in REQUESTS
    for name in body.examples
]


class Recording(dict):
    """A body that notes which keys the parser looks up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _nullable_as_json_schema(node):
    """OpenAPI 3.0's ``nullable`` as JSON Schema, which jsonschema understands."""
    if isinstance(node, list):
        return [_nullable_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_as_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


def _validator(schema: dict, name: str) -> jsonschema.Draft7Validator:
    root = {"$ref": f"#/components/schemas/{name}", "components": schema["components"]}
    return jsonschema.Draft7Validator(_nullable_as_json_schema(root))


def _wrong_value(property_schema: dict):
    """A value of the wrong JSON type for a property."""
    kind = property_schema.get("type")
    if kind == "string" or "oneOf" in property_schema:
        return 12345
    return "not a " + (kind or "value")


def test_every_wire_format_describes_its_requests():
    assert {body.name for body in REQUESTS} == {
        "AiChatRequest",
        "DocChatRequest",
        "DocGenerateRequest",
        "AiSdkChatRequest",
        "ChatCompletionRequest",
    }
    assert all(len(body.examples) >= 2 for body in REQUESTS)


@pytest.mark.parametrize(("body", "name"), EXAMPLES)
def test_each_example_passes_the_parser_and_the_schema(schema, body, name):
    example = body.examples[name]
    body.parse(example)
    errors = [error.message for error in _validator(schema, body.name).iter_errors(example)]
    assert errors == []


@pytest.mark.parametrize("body", REQUESTS, ids=lambda body: body.name)
def test_the_parser_reads_exactly_the_documented_fields(body):
    read: set[str] = set()
    for example in body.examples.values():
        recording = Recording(example)
        body.parse(recording)
        read |= recording.read
    assert read == set(body.schema()["properties"])


@pytest.mark.parametrize("body", REQUESTS, ids=lambda body: body.name)
def test_the_parser_requires_what_the_schema_requires(body):
    schema = body.schema()
    required = set(schema.get("required", ()))
    alternatives = [set(choice["required"]) for choice in schema.get("oneOf", ())]
    for example in body.examples.values():
        for key in example:
            rest = {name: value for name, value in example.items() if name != key}
            if key in required or any(choice == {key} for choice in alternatives):
                # A missing alternative may be reported under any of them.
                named = {key} if key in required else set().union(*alternatives)
                with pytest.raises(ApiError) as refused:
                    body.parse(rest)
                assert named & set(refused.value.details), (key, refused.value.details)
            else:
                body.parse(rest)  # an optional field may be left out


@pytest.mark.parametrize("body", REQUESTS, ids=lambda body: body.name)
def test_the_parser_checks_the_type_of_every_documented_field(body):
    for key, property_schema in body.schema()["properties"].items():
        if not property_schema or ("description" in property_schema and len(property_schema) == 1):
            continue
        example = next(
            (example for example in body.examples.values() if key in example),
            next(iter(body.examples.values())),
        )
        with pytest.raises(ApiError) as refused:
            body.parse({**example, key: _wrong_value(property_schema)})
        assert any(name.split("[")[0].split(".")[0] == key for name in refused.value.details), (
            key,
            refused.value.details,
        )


def test_tiers_are_the_catalogs():
    quality = REGPILOT_REQUEST.schema()["properties"]["quality"]
    assert quality["enum"] == list(LLMModel.Tier.values) == list(QUALITY_TIERS)
    assert quality["default"] == DEFAULT_QUALITY
