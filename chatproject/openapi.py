"""OpenAPI post-processing: show paths as the seeds spell them, and describe the plain
Django views (the SSE transports and the OpenAI-compatible API), which drf-spectacular
cannot see."""

from typing import Any

from django.conf import settings

from chatproject.errors import ErrorCode

# Paths whose trailing slash the seeds write; every other path is shown without one
# (the URL patterns accept both).
SLASHED_PATHS = {"/api/v1/chats/"}


def seed_path_spelling(result, generator, request, public):
    result["paths"] = {
        (path if path in SLASHED_PATHS else path.rstrip("/")): item
        for path, item in result["paths"].items()
    }
    return result


# --- The plain Django views (chats/transports) ------------------------------------------

Schema = dict[str, Any]
API_KEY = [{"ApiKeyAuth": []}]
OPENAI_AUTH = [{"BearerAuth": []}, {"ApiKeyAuth": []}]
KEEPALIVE_NOTE = "While the model is silent the server sends `: keep-alive` comment lines."


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: Schema, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _str(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def _messages(roles: tuple[str, ...], **extra: Any) -> Schema:
    item = _obj({"role": _str(enum=list(roles)), "content": _str()}, ("role", "content"))
    return {"type": "array", "items": item, **extra}


def _schemas(governor_metadata: Schema) -> dict[str, Schema]:
    max_message = settings.CHAT_MAX_MESSAGE_LENGTH
    history = _messages(("user", "assistant"), maxItems=settings.CHAT_MAX_HISTORY_MESSAGES)
    document_type = _str(pattern=r"^[A-Za-z0-9_.-]{1,64}$", default="UNSORTED")
    tier_or_model = "A catalog model name, or a quality tier: `cheap`, `balanced`, `frontier`."
    usage = {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    }
    text_part = _obj({"type": _str(enum=["text"]), "text": _str()}, ("type", "text"))
    function = _obj(
        {"name": _str(), "description": _str(), "parameters": {"type": "object"}}, ("name",)
    )
    tools = {
        "type": "array",
        "description": "Functions the client runs itself (OpenAI's format).",
        "items": _obj({"type": _str(enum=["function"]), "function": function}, ("function",)),
    }
    tool_call = _obj(
        {
            "id": _str(),
            "type": _str(enum=["function"]),
            "function": _obj({"name": _str(), "arguments": _str()}),
        }
    )
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": _str(enum=[code.value for code in ErrorCode]),
                        "message": _str(),
                        "details": {"type": "object", "additionalProperties": True},
                    },
                    ("code", "message"),
                )
            },
            ("error",),
            description="The product's error envelope (SPEC §6).",
        ),
        "OpenAIError": _obj(
            {
                "error": _obj(
                    {
                        "message": _str(),
                        "type": _str(),
                        "param": _str(nullable=True),
                        "code": _str(nullable=True),
                    },
                    ("message", "type", "param", "code"),
                )
            },
            ("error",),
            description="OpenAI's error shape.",
        ),
        "AiChatRequest": _obj(
            {
                "messages": _messages(("user", "assistant", "system"), minItems=1),
                "quality": _str(enum=["cheap", "balanced", "frontier"], default="balanced"),
                "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.7},
                "model": _str(maxLength=100, description="Overrides the quality routing."),
                "governorMetadata": governor_metadata,
            },
            ("messages",),
        ),
        "AiChatCompletion": _obj(
            {
                "id": _str(format="uuid"),
                "content": _str(),
                "model": _str(),
                "cache_status": _str(enum=["HIT", "MISS"]),
                "finish_reason": _str(),
                "usage": _obj(
                    {
                        **usage,
                        "credits_charged": {"type": "number"},
                        "credits_remaining": {"type": "number"},
                    }
                ),
            }
        ),
        "DocChatRequest": _obj(
            {
                "message": _str(maxLength=max_message),
                "conversation_id": _str(
                    maxLength=255, description="Any key; the same key continues the chat."
                ),
                "project_id": _str(maxLength=255),
                "user_name": _str(maxLength=100),
                "document_type": document_type,
                "history": history,
                "existing_documents": {
                    "type": "object",
                    "additionalProperties": _str(),
                    "description": "Path → content.",
                },
                "metadata": {"type": "object"},
            },
            ("message",),
        ),
        "DocGenerateRequest": _obj(
            {
                "message": _str(maxLength=max_message),
                "document_type": document_type,
                "history": history,
                "metadata": _obj({"project_id": _str()}),
            },
            ("message",),
        ),
        "AiSdkChatRequest": _obj(
            {
                "prompt": _str(),
                "messages": {
                    "type": "array",
                    "description": "AI SDK `UIMessage`s: their text parts, and the tool parts "
                    "(`tool-<name>`, `dynamic-tool`) of assistant messages.",
                    "items": _obj(
                        {
                            "id": _str(),
                            "role": _str(enum=["user", "assistant", "system"]),
                            "parts": {"type": "array", "items": text_part},
                        },
                        ("role", "parts"),
                    ),
                },
                "roomId": _str(format="uuid", description="The chat; created when absent."),
                "id": _str(description="DefaultChatTransport's chat id, used without roomId."),
                "trigger": _str(enum=["submit-message", "regenerate-message"]),
                "model": _str(description=tier_or_model),
                "artistId": _str(),
                "excludeTools": {
                    "type": "array",
                    "items": _str(),
                    "description": "Tools not to offer; unknown names are ignored.",
                },
                "projectId": _str(description="A project the model may `search_knowledge`."),
                "tools": tools,
            },
            description="Exactly one of `prompt` and `messages`.",
        ),
        "ChatCompletionRequest": _obj(
            {
                "model": _str(description=tier_or_model),
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "role": _str(enum=["system", "developer", "user", "assistant", "tool"]),
                            "content": {"oneOf": [_str(), {"type": "array", "items": text_part}]},
                            "tool_calls": {"type": "array", "items": tool_call},
                            "tool_call_id": _str(description="A tool message's call."),
                        },
                        ("role",),
                    ),
                },
                "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
                "max_completion_tokens": {"type": "integer", "minimum": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
                "n": {"type": "integer", "enum": [1]},
                "stream": {"type": "boolean", "default": False},
                "stream_options": _obj({"include_usage": {"type": "boolean"}}),
                "user": _str(),
                "tools": tools,
                "tool_choice": {
                    "oneOf": [
                        _str(enum=["auto", "none", "required"]),
                        _obj({"type": _str(enum=["function"]), "function": _obj({"name": _str()})}),
                    ]
                },
                "parallel_tool_calls": {"type": "boolean"},
            },
            ("model", "messages"),
            description="Images and n > 1 are refused with 400.",
        ),
        "ChatCompletion": _obj(
            {
                "id": _str(),
                "object": _str(enum=["chat.completion"]),
                "created": {"type": "integer"},
                "model": _str(),
                "choices": {
                    "type": "array",
                    "items": _obj(
                        {
                            "index": {"type": "integer"},
                            "message": _obj(
                                {
                                    "role": _str(enum=["assistant"]),
                                    "content": _str(nullable=True),
                                    "tool_calls": {"type": "array", "items": tool_call},
                                }
                            ),
                            "finish_reason": _str(),
                        }
                    ),
                },
                "usage": _obj(usage),
            }
        ),
        "Model": _obj(
            {
                "id": _str(),
                "object": _str(enum=["model"]),
                "created": {"type": "integer"},
                "owned_by": _str(),
            }
        ),
        "ModelList": _obj(
            {"object": _str(enum=["list"]), "data": {"type": "array", "items": _ref("Model")}}
        ),
    }


RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "The plan's burst."},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
    "X-RateLimit-Reset": {
        "schema": {"type": "integer"},
        "description": "Seconds until the allowance is full again.",
    },
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}

# What each failure means; the status comes from SPEC §6 (or the path's seed).
ERROR_MEANINGS = {
    400: "Invalid body or parameters (`details` names each field), or an unknown model.",
    401: "Missing, unknown, revoked or expired key.",
    402: "The balance cannot cover the request.",
    403: "The governor did not approve the request.",
    404: "No such model.",
    405: "Method not allowed.",
    422: "Invalid body (`details` names each field).",
    429: "The plan's rate limit (or, on /v1, the provider's own 429).",
    502: "The provider failed: unreachable, or it answered an error (streams: before the "
    "first token; after it the stream carries an error event).",
    503: "The database is down for now (SERVICE_UNAVAILABLE): retry after `Retry-After`.",
    504: "The provider did not answer in time.",
}


def _errors(schema: str, statuses: dict[int, str | None]) -> dict[str, Schema]:
    """The error responses ``statuses`` (a meaning, or None for the usual one), and 503,
    which every endpoint may answer while the database is down."""
    responses = {}
    for status, meaning in {**statuses, 503: None}.items():
        response: Schema = {
            "description": meaning or ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": _ref(schema)}},
        }
        if status == 429:
            response["headers"] = {**RETRY_AFTER, **RATE_HEADERS}
        elif status == 503:
            response["headers"] = RETRY_AFTER
        responses[str(status)] = response
    return responses


def _stream(description: str) -> Schema:
    return {
        "description": f"{description} {KEEPALIVE_NOTE}",
        "headers": RATE_HEADERS,
        "content": {"text/event-stream": {"schema": _str()}},
    }


def _json(schema: str, description: str = "OK") -> Schema:
    return {
        "description": description,
        "headers": RATE_HEADERS,
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    body: str | None = None,
    security: list | None = None,
    **extra: Any,
) -> Schema:
    operation: Schema = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": security or API_KEY,
        "responses": responses,
        **extra,
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return operation


def _path_parameter(name: str, description: str) -> Schema:
    return {
        "in": "path",
        "name": name,
        "required": True,
        "schema": _str(),
        "description": description,
    }


AI_CHAT_ERRORS = {400: None, 401: None, 402: None, 403: None, 429: None, 502: None, 504: None}
DOC_ERRORS = {
    403: "Bad key (UNAUTHORIZED), or the governor's refusal.",
    422: None,
    402: None,
    429: None,
}


def _paths() -> dict[str, Schema]:
    return {
        "/api/ai/chat": {
            "post": _operation(
                "ai_chat_stream",
                "ai-chat",
                "Streaming chat with routing, governor and credits (seed 000)",
                {
                    "200": _stream(
                        'One `data: {"content": "<token>"}` event per token, then `event: '
                        "usage` (prompt/completion/total tokens, credits_charged, "
                        "credits_remaining, model, cache_status, finish_reason), then "
                        "`data: [DONE]`. A failure after the first token is `event: error` "
                        "`{code, message, retryable, request_id}`, then the usage event and "
                        "`[DONE]`. Headers: `x-regpilot-model`, `x-cache-status`, "
                        "`x-regpilot-prompt-tokens`, `x-credits-remaining`, `x-governor-*`."
                    ),
                    **_errors("Error", AI_CHAT_ERRORS),
                },
                body="AiChatRequest",
            )
        },
        "/api/ai/chat/complete": {
            "post": _operation(
                "ai_chat_complete",
                "ai-chat",
                "The same chat answered as one JSON object, every figure also a header",
                {"200": _json("AiChatCompletion"), **_errors("Error", AI_CHAT_ERRORS)},
                body="AiChatRequest",
            )
        },
        "/api/v1/chat/stream": {
            "post": _operation(
                "docgen_chat_stream",
                "docgen",
                "Project document chat (seed 001)",
                {
                    "200": _stream(
                        "Named events, each `event: <name>` and `data: <JSON>`. Per token "
                        '`message` `{"token", "done": false}`; at the end '
                        '`done` `{"full_response", "document_types_used", "metadata",'
                        ' "done": true}`, or `error` `{"error", "code", "retryable",'
                        ' "request_id"}` with code `LLM_CONNECTION_ERROR`, '
                        "`RAG_RETRIEVAL_ERROR`, `SERVICE_UNAVAILABLE` or `STREAM_ERROR`."
                    ),
                    **_errors("Error", DOC_ERRORS),
                },
                body="DocChatRequest",
            )
        },
        "/api/v1/chat/generate": {
            "post": _operation(
                "docgen_chat_generate",
                "docgen",
                "Legacy document generation stream (seed 001)",
                {
                    "200": _stream(
                        "Named events, each `event: <name>` and `data: <JSON>`. Per token "
                        '`token` `{"token", "index"}`; at the end `done` `{"total_tokens", '
                        '"duration_ms"}` or `error` `{"code", "message"}`.'
                    ),
                    **_errors("Error", DOC_ERRORS),
                },
                body="DocGenerateRequest",
            )
        },
        "/api/v1/chat/message": {
            "post": _operation(
                "docgen_chat_message",
                "docgen",
                "Retired: use /api/v1/chat/stream",
                _errors(
                    "Error",
                    {
                        400: "Always: the endpoint is retired (see the `Link` header).",
                        403: "Bad key.",
                        429: None,
                    },
                ),
                deprecated=True,
            )
        },
        "/api/chat": {
            "post": _operation(
                "ai_sdk_chat",
                "ai-sdk",
                "AI SDK UI message stream (seed 003)",
                {
                    "200": _stream(
                        "The Vercel AI SDK UI message stream (`x-vercel-ai-ui-message-stream:"
                        " v1`): `data:` JSON chunks typed `start`, `start-step`, `text-start`,"
                        " `text-delta`…, `text-end`, `finish-step`, `message-metadata`, "
                        "`finish` (an `error` chunk before `message-metadata` on failure), "
                        "then `data: [DONE]`. The exchange is stored in the chat "
                        "(`x-chat-id`). CORS headers on every answer; OPTIONS answers 200."
                    ),
                    **_errors("Error", {400: None, 401: None, 402: None, 403: None, 429: None}),
                },
                body="AiSdkChatRequest",
            )
        },
        "/api/chat/{chat_id}/stream": {
            "get": _operation(
                "ai_sdk_chat_resume",
                "ai-sdk",
                "Resume a stream: streams are not kept, so there is never one to resume",
                {
                    "204": {"description": "No stream to resume.", "headers": RATE_HEADERS},
                    **_errors("Error", {401: None, 429: None}),
                },
                parameters=[_path_parameter("chat_id", "The chat's id.")],
            )
        },
        "/v1/chat/completions": {
            "post": _operation(
                "openai_chat_completions",
                "openai",
                "OpenAI-compatible chat completions",
                {
                    "200": {
                        "description": (
                            "`stream: false`: a `chat.completion`. `stream: true`: `data:` "
                            "`chat.completion.chunk` objects (the first with the role, the "
                            "last with finish_reason; then one with `usage` when "
                            "`stream_options.include_usage`), then `data: [DONE]`. A "
                            "failure after the first token is a `data:` error object ending "
                            f"the stream; one before it is an HTTP error. {KEEPALIVE_NOTE}"
                        ),
                        "headers": RATE_HEADERS,
                        "content": {
                            "application/json": {"schema": _ref("ChatCompletion")},
                            "text/event-stream": {"schema": _str()},
                        },
                    },
                    **_errors(
                        "OpenAIError",
                        {
                            400: None,
                            401: None,
                            402: None,
                            403: None,
                            404: None,
                            429: None,
                            502: None,
                            504: None,
                        },
                    ),
                },
                body="ChatCompletionRequest",
                security=OPENAI_AUTH,
            )
        },
        "/v1/models": {
            "get": _operation(
                "openai_models",
                "openai",
                "Models and quality tiers",
                {"200": _json("ModelList"), **_errors("OpenAIError", {401: None, 429: None})},
                security=OPENAI_AUTH,
            )
        },
        "/v1/models/{model_id}": {
            "get": _operation(
                "openai_model",
                "openai",
                "One model or tier",
                {
                    "200": _json("Model"),
                    **_errors("OpenAIError", {401: None, 404: None, 429: None}),
                },
                security=OPENAI_AUTH,
                parameters=[
                    _path_parameter("model_id", "A model id; it may contain `/` (`demo/cheap`).")
                ],
            )
        },
    }


def plain_view_paths(result, generator, request, public):
    """Add the paths of the plain Django views, with their schemas and security."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    governor_metadata = _ref("GovernorMetadata") if "GovernorMetadata" in schemas else None
    schemas.update(_schemas(governor_metadata or {"type": "object"}))
    security = components.setdefault("securitySchemes", {})
    security.setdefault("ApiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    security["BearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The tenant key, as OpenAI clients send it (only on /v1).",
    }
    result["paths"] = dict(sorted({**result["paths"], **_paths()}.items()))
    return result


def rest_error_responses(result, generator, request, public):
    """Document the error envelope on the REST (DRF) operations: every one can answer
    400, 401 and 429; those with ids in the path 404; those that take a body 413. The
    hand-written operations of the plain views declare their own errors already."""
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
                statuses[413] = "The request body is over its size limit."
            responses = operation.setdefault("responses", {})
            for status, response in _errors("Error", statuses).items():
                responses.setdefault(status, response)
    return result
