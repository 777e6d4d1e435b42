"""The OpenAPI description at /api/schema/: the DRF views and the plain Django ones."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

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


def test_seed_001_errors_use_its_statuses(schema):
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
