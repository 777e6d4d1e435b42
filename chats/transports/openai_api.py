"""OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The request and response shapes are OpenAI's, so the official SDKs work unchanged with a
tenant key (``Authorization: Bearer`` or ``X-API-Key``). Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with ``x-should-retry`` for the SDKs.
A provider failure before the first token is an HTTP error too, streaming or not (the
SDKs raise ``RateLimitError``, ``InternalServerError``... at the call and retry it); one
after it ends the stream with an error object. ``model`` is a catalog name or a quality
tier (``cheap``, ``balanced``, ``frontier``). Nothing is stored in a chat.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from chatproject import openapi_fragments as oa
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode
from chatproject.json_body import read_json
from chats import catalog
from chats.engine import (
    ErrorEvent,
    Event,
    FinishedEvent,
    Generation,
    TokenEvent,
    ToolCallEvent,
    start_generation,
)
from chats.transports.encoding import credits_text
from chats.transports.endpoints import authenticate, endpoint, generation_request
from chats.transports.generation_headers import generation_headers, stream_headers
from chats.transports.generation_stream import final_event, generation_response
from chats.transports.requests import model_choice
from chats.transports.resume import last_event_id, openapi_paths, resume_response, stream_id
from chats.transports.schemas.openai_api import (
    OPENAI_REQUEST,
    parse_openai_chat,
    tool_call_schema,
)
from chats.transports.sse import DONE, Template, sse

RESUME_PATH = "/v1/chat/streams/{stream_id}"

# code → (HTTP status, OpenAI error type, OpenAI error code)
_ERRORS: dict[ErrorCode, tuple[int, str, str | None]] = {
    ErrorCode.UNAUTHORIZED: (401, "invalid_request_error", "invalid_api_key"),
    ErrorCode.VALIDATION_ERROR: (400, "invalid_request_error", None),
    ErrorCode.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error", None),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "invalid_request_error", None),
    ErrorCode.INSUFFICIENT_CREDITS: (402, "insufficient_quota", "insufficient_quota"),
    ErrorCode.GOVERNOR_REJECTED: (403, "permission_error", "governor_rejected"),
    ErrorCode.RATE_LIMITED: (429, "requests", "rate_limit_exceeded"),
    ErrorCode.CONCURRENCY_LIMIT: (429, "requests", "concurrency_limit_exceeded"),
    ErrorCode.LLM_CONNECTION_ERROR: (502, "api_error", "upstream_connection_error"),
    ErrorCode.LLM_TIMEOUT: (504, "api_error", "upstream_timeout"),
    ErrorCode.LLM_PROVIDER_ERROR: (502, "api_error", "upstream_error"),
    ErrorCode.STREAM_ERROR: (500, "server_error", None),
    ErrorCode.SERVICE_UNAVAILABLE: (503, "server_error", "service_unavailable"),
}
_OPENAI_FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "function_call")


def openai_error(error: ApiError) -> dict[str, Any]:
    _, error_type, code = _ERRORS.get(error.code, (error.status, "api_error", None))
    param = None
    if error.details:
        param = next(iter(error.details))
    if error.code == ErrorCode.MODEL_NOT_FOUND:
        param = "model"
    return {
        "error": {
            "message": error.message,
            "type": error_type,
            "param": param,
            "code": code or error.code.value.lower(),
        }
    }


def upstream_status(error: ApiError) -> int | None:
    """The HTTP status the provider answered an LLM_PROVIDER_ERROR with, if known."""
    if error.code != ErrorCode.LLM_PROVIDER_ERROR:
        return None
    known = (error.details or {}).get("upstream_status")
    return known if isinstance(known, int) else None


def error_status(error: ApiError) -> int:
    """The code's usual status (``chatproject.errors``), except that the provider's own
    429 stays a 429, so clients back off (the OpenAI SDKs raise RateLimitError and
    retry), and a body over the size limit keeps its 413."""
    if error.status == 413:
        return 413
    if upstream_status(error) == 429:
        return 429
    return _ERRORS.get(error.code, (error.status, "", None))[0]


def openai_error_response(error: ApiError) -> HttpResponse:
    response = JsonResponse(openai_error(error), status=error_status(error))
    for name, value in error.headers.items():
        response[name] = value
    # The OpenAI SDKs obey this over their own guess from the status (they would retry
    # any 5xx, STREAM_ERROR and a provider's 4xx included).
    response.setdefault("x-should-retry", "true" if error.retryable else "false")
    return response


def _finish_reason(reason: str) -> str:
    return reason if reason in _OPENAI_FINISH_REASONS else "stop"


# --- POST /v1/chat/completions -----------------------------------------------------------------


def _completion_chunk(
    generation: Generation, created: int, include_usage: bool, **fields: Any
) -> dict[str, Any]:
    data = {
        "id": f"chatcmpl-{generation.message_id.hex}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": generation.model_name,
        "system_fingerprint": None,
        **fields,
    }
    if include_usage:
        data.setdefault("usage", None)  # OpenAI: null on every chunk but the usage one
    return data


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]


async def _encode_stream(
    generation: Generation, events: AsyncIterator[Event], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    created = int(time.time())
    token = Template(
        sse(
            _completion_chunk(
                generation, created, include_usage, choices=_choice({"content": Template.SLOT})
            )
        )
    )
    yield sse(
        _completion_chunk(
            generation,
            created,
            include_usage,
            choices=_choice({"role": "assistant", "content": "", "refusal": None}),
        )
    )
    async for event in events:
        if isinstance(event, TokenEvent):
            yield token.fill(event.text)
        elif isinstance(event, ToolCallEvent):
            choices = _choice({"tool_calls": [_call_piece(event)]})
            yield sse(_completion_chunk(generation, created, include_usage, choices=choices))
        elif isinstance(event, FinishedEvent):
            choices = _choice({}, _finish_reason(event.finish_reason))
            yield sse(_completion_chunk(generation, created, include_usage, choices=choices))
            if include_usage:
                usage = event.usage.to_dict()
                yield sse(
                    _completion_chunk(generation, created, include_usage, choices=[], usage=usage)
                )
            yield DONE
        elif isinstance(event, ErrorEvent):
            # As OpenAI does once a stream has begun: an error object as a data event, and
            # the stream ends. (An error before the first token is an HTTP error instead.)
            yield sse(openai_error(event.error))


def _call_piece(event: ToolCallEvent) -> dict[str, Any]:
    """A tool call piece as OpenAI streams it: the first names the call, the others add to
    its arguments, each under the call's index."""
    if event.first:
        function = {"name": event.name, "arguments": event.arguments}
        return {"index": event.index, "id": event.call_id, "type": "function", "function": function}
    return {"index": event.index, "function": {"arguments": event.arguments}}


def _message(end: FinishedEvent) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": end.content, "refusal": None}
    if end.tool_calls:
        message["content"] = end.content or None
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in end.tool_calls
        ]
    return message


def _end_headers(end: FinishedEvent | ErrorEvent) -> dict[str, str]:
    return {
        "x-credits-charged": credits_text(end.credits_charged),
        "x-credits-remaining": credits_text(end.credits_remaining),
    }


def _error_first(end: ErrorEvent) -> HttpResponse:
    response = openai_error_response(end.error)
    for name, value in _end_headers(end).items():
        response[name] = value
    return response


@endpoint(on_error=openai_error_response)
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    tenant = await authenticate(request)
    body = parse_openai_chat(read_json(request))
    quality, model = model_choice(body.model)
    generation = await start_generation(
        generation_request(
            request,
            tenant,
            body.messages,
            quality=quality,
            model=model,
            temperature=body.temperature,
            max_tokens=body.max_tokens,
            tools=body.tools,
            tool_choice=body.tool_choice,
            parallel_tool_calls=body.parallel_tool_calls,
        )
    )
    headers = generation_headers(generation)
    if body.stream:
        return await generation_response(
            generation,
            lambda events: _encode_stream(generation, events, body.include_usage),
            headers={**headers, **stream_headers(generation, RESUME_PATH)},
            error_first=_error_first,
            resumable="openai",
        )

    end = await final_event(generation)
    if isinstance(end, ErrorEvent):
        response = openai_error_response(end.error)
    else:
        response = JsonResponse(
            {
                "id": f"chatcmpl-{end.message_id.hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": generation.model_name,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": _message(end),
                        "logprobs": None,
                        "finish_reason": _finish_reason(end.finish_reason),
                    }
                ],
                "usage": end.usage.to_dict(),
            }
        )
    headers.update(_end_headers(end))
    for name, value in headers.items():
        response[name] = value
    return response


@endpoint(methods=("GET", "DELETE"), on_error=openai_error_response)
async def resume(request: HttpRequest, stream: str) -> HttpResponseBase:
    """``GET /v1/chat/streams/<id>``: a stream of ``POST /v1/chat/completions`` again,
    after its ``Last-Event-ID`` (see :mod:`chats.transports.resume`); the id may be the
    chunks' ``chatcmpl-`` id."""
    tenant = await authenticate(request, rate_limit=True)
    return await resume_response(
        tenant=tenant,
        stream_format="openai",
        method=request.method,
        log_id=stream_id(stream),
        after=last_event_id(request),
        lost=lambda error: [sse(openai_error(error))],
    )


# --- GET /v1/models --------------------------------------------------------------------------


async def _model_list() -> list[dict[str, Any]]:
    rows = await db_call(catalog.available_models)
    models = [
        {"id": row.name, "object": "model", "created": 0, "owned_by": row.provider} for row in rows
    ]
    served = {row.tier for row in rows if row.tier}
    models += [
        {"id": tier, "object": "model", "created": 0, "owned_by": "router"}
        for tier in catalog.QUALITY_TIERS
        if tier in served
    ]
    return models


@endpoint(methods=("GET",), on_error=openai_error_response)
async def models(request: HttpRequest) -> HttpResponseBase:
    await authenticate(request, rate_limit=True)
    return JsonResponse({"object": "list", "data": await _model_list()})


@endpoint(methods=("GET",), on_error=openai_error_response)
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponseBase:
    await authenticate(request, rate_limit=True)
    for model in await _model_list():
        if model["id"] == model_id:
            return JsonResponse(model)
    raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"The model {model_id!r} does not exist.")


# --- The OpenAPI description ---------------------------------------------------------------

AUTH: list[dict[str, list[str]]] = [{"BearerAuth": []}, {"ApiKeyAuth": []}]


def _schemas() -> dict[str, oa.Schema]:
    usage = {
        name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    message = oa.obj(
        {
            "role": oa.string(choices=("assistant",)),
            "content": oa.string(nullable=True),
            "tool_calls": oa.array(tool_call_schema()),
        }
    )
    choice = oa.obj(
        {"index": {"type": "integer"}, "message": message, "finish_reason": oa.string()}
    )
    error = oa.obj(
        {
            "message": oa.string(),
            "type": oa.string(),
            "param": oa.string(nullable=True),
            "code": oa.string(nullable=True),
        },
        ("message", "type", "param", "code"),
    )
    return {
        "OpenAIError": oa.obj({"error": error}, ("error",), description="OpenAI's error shape."),
        "ChatCompletion": oa.obj(
            {
                "id": oa.string(),
                "object": oa.string(choices=("chat.completion",)),
                "created": {"type": "integer"},
                "model": oa.string(),
                "choices": oa.array(choice),
                "usage": oa.obj(usage),
            }
        ),
        "Model": oa.obj(
            {
                "id": oa.string(),
                "object": oa.string(choices=("model",)),
                "created": {"type": "integer"},
                "owned_by": oa.string(),
            }
        ),
        "ModelList": oa.obj(
            {"object": oa.string(choices=("list",)), "data": oa.array(oa.ref("Model"))}
        ),
    }


def openapi() -> oa.Fragment:
    completion = {
        "description": (
            "`stream: false`: a `chat.completion`. `stream: true`: `data:` "
            "`chat.completion.chunk` objects (the first with the role, the last with "
            "finish_reason; then one with `usage` when `stream_options.include_usage`), then "
            "`data: [DONE]`. A failure after the first token is a `data:` error object ending "
            f"the stream; one before it is an HTTP error. {oa.KEEPALIVE_NOTE}"
        ),
        "headers": oa.RATE_HEADERS,
        "content": {
            "application/json": {"schema": oa.ref("ChatCompletion")},
            "text/event-stream": {"schema": oa.string()},
        },
    }
    errors = dict.fromkeys((400, 401, 402, 403, 404, 429, 502, 504))
    model_id = oa.path_parameter("model_id", "A model id; it may contain `/` (`demo/cheap`).")
    return oa.Fragment(
        paths={
            **openapi_paths(
                "openai_chat", "openai", "/v1/chat/streams/{stream_id}", "OpenAIError", 400, AUTH
            ),
            "/v1/chat/completions": {
                "post": oa.operation(
                    "openai_chat_completions",
                    "openai",
                    "OpenAI-compatible chat completions",
                    {"200": completion, **oa.errors("OpenAIError", errors)},
                    body=OPENAI_REQUEST,
                    security=AUTH,
                )
            },
            "/v1/models": {
                "get": oa.operation(
                    "openai_models",
                    "openai",
                    "Models and quality tiers",
                    {
                        "200": oa.json_response("ModelList"),
                        **oa.errors("OpenAIError", {401: None, 429: None}),
                    },
                    security=AUTH,
                )
            },
            "/v1/models/{model_id}": {
                "get": oa.operation(
                    "openai_model",
                    "openai",
                    "One model or tier",
                    {
                        "200": oa.json_response("Model"),
                        **oa.errors("OpenAIError", {401: None, 404: None, 429: None}),
                    },
                    security=AUTH,
                    parameters=[model_id],
                )
            },
        },
        requests=(OPENAI_REQUEST,),
        schemas=_schemas(),
    )
