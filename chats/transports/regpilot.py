"""``POST /api/ai/chat`` (SSE) and ``POST /api/ai/chat/complete`` (JSON), RegPilot's
format (docs/wire-formats.md: routed chat).

Stream: ``data: {"content": ...}`` per token, then ``event: usage`` with the settled
figures, then ``data: [DONE]``. A failure before the first token is an HTTP error (the
format's 5xx), unless the first token was awaited longer than the keep-alive interval and
the stream had begun; a failure after it is ``event: error`` (code, message,
retryable), then the usage event, then ``[DONE]``. Not stored in a chat: the format has no
chat id.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from billing.models import Tenant
from chatproject import openapi_fragments as oa
from chatproject.errors import ApiError, error_response
from chatproject.json_body import read_json
from chats.engine import ErrorEvent, Event, FinishedEvent, Generation, TokenEvent, start_generation
from chats.transports.encoding import credits_number, credits_text
from chats.transports.endpoints import authenticate, endpoint, generation_request
from chats.transports.generation_headers import (
    credits_remaining,
    generation_headers,
    stream_headers,
)
from chats.transports.generation_stream import final_event, generation_response
from chats.transports.resume import last_event_id, openapi_paths, resume_response, stream_id
from chats.transports.schemas.regpilot import REGPILOT_REQUEST, parse_regpilot
from chats.transports.sse import DONE, sse

RESUME_PATH = "/api/ai/chat/streams/{stream_id}"


async def _start(request: HttpRequest) -> tuple[Tenant, Generation]:
    tenant = await authenticate(request)
    body = parse_regpilot(read_json(request))
    generation = await start_generation(
        generation_request(
            request,
            tenant,
            body.messages,
            quality=body.quality,
            model=body.model,
            temperature=body.temperature,
            governor_metadata=body.governor_metadata,
        )
    )
    return tenant, generation


def _headers(generation: Generation, remaining: Decimal) -> dict[str, str]:
    """What is known at the first token; on a cache hit that is every figure."""
    cached = generation.cached
    headers = {
        "x-regpilot-model": generation.model_name,
        "x-cache-status": generation.cache_status,
        "x-regpilot-prompt-tokens": str(
            cached.prompt_tokens if cached else generation.prompt_tokens
        ),
        "x-credits-remaining": credits_text(remaining),
    }
    if not generation.generates:  # a cache hit, or an identical request's answer joined
        headers["x-credits-charged"] = "0"
    if cached:
        headers["x-regpilot-completion-tokens"] = str(cached.completion_tokens)
    headers.update(generation_headers(generation))
    return headers


def _usage(generation: Generation, end: FinishedEvent | ErrorEvent) -> dict[str, Any]:
    return {
        **end.usage.to_dict(),
        "credits_charged": credits_number(end.credits_charged),
        "credits_remaining": credits_number(end.credits_remaining),
        "model": generation.model_name,
        "cache_status": generation.cache_status,
        "finish_reason": end.finish_reason if isinstance(end, FinishedEvent) else "error",
    }


def _error_event(end: ErrorEvent, request_id: str) -> dict[str, Any]:
    return {**end.error.event(), "request_id": request_id}


async def _encode(
    generation: Generation, events: AsyncIterator[Event]
) -> AsyncGenerator[bytes, None]:
    request_id = generation.request.request_id
    async for event in events:
        if isinstance(event, TokenEvent):
            yield sse({"content": event.text})
        elif isinstance(event, FinishedEvent):
            yield sse(_usage(generation, event), event="usage")
        elif isinstance(event, ErrorEvent):  # tool events: this format has none
            yield sse(_error_event(event, request_id), event="error")
            yield sse(_usage(generation, event), event="usage")
    yield DONE


def _end_headers(generation: Generation, end: FinishedEvent | ErrorEvent) -> dict[str, str]:
    """Every figure, once the generation has ended."""
    return {
        "x-regpilot-model": generation.model_name,
        "x-cache-status": generation.cache_status,
        "x-regpilot-prompt-tokens": str(end.usage.prompt_tokens),
        "x-regpilot-completion-tokens": str(end.usage.completion_tokens),
        "x-credits-charged": credits_text(end.credits_charged),
        "x-credits-remaining": credits_text(end.credits_remaining),
        **generation_headers(generation),
    }


def _failed(generation: Generation, end: ErrorEvent) -> HttpResponse:
    """A failed generation as an HTTP error (5xx for the provider's), every figure in
    its headers."""
    response = error_response(end.error)
    for name, value in _end_headers(generation, end).items():
        response[name] = value
    return response


@endpoint()
async def chat_stream(request: HttpRequest) -> HttpResponseBase:
    tenant, generation = await _start(request)
    remaining = await credits_remaining(generation, tenant)
    return await generation_response(
        generation,
        lambda events: _encode(generation, events),
        # Made at the first event, so that they name the model that answers.
        headers=lambda: {
            **_headers(generation, remaining),
            **stream_headers(generation, RESUME_PATH),
        },
        error_first=lambda end: _failed(generation, end),
        resumable="regpilot",
    )


def _lost(error: ApiError) -> list[bytes]:
    return [sse(error.event(), event="error"), DONE]


@endpoint(methods=("GET", "DELETE"))
async def resume(request: HttpRequest, stream: str) -> HttpResponseBase:
    """``GET /api/ai/chat/streams/<id>``: a stream of ``POST /api/ai/chat`` again, after
    its ``Last-Event-ID`` (see :mod:`chats.transports.resume`)."""
    tenant = await authenticate(request, rate_limit=True)
    return await resume_response(
        tenant=tenant,
        stream_format="regpilot",
        method=request.method,
        log_id=stream_id(stream),
        after=last_event_id(request),
        lost=_lost,
    )


@endpoint()
async def chat_complete(request: HttpRequest) -> HttpResponseBase:
    """The whole answer as JSON, every figure also as a header."""
    _, generation = await _start(request)
    end = await final_event(generation)
    if isinstance(end, ErrorEvent):
        return _failed(generation, end)
    usage = _usage(generation, end)
    response = JsonResponse(
        {
            "id": str(end.message_id),
            "content": end.content,
            "model": generation.model_name,
            "cache_status": generation.cache_status,
            "finish_reason": end.finish_reason,
            "usage": {
                key: usage[key]
                for key in (
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "credits_charged",
                    "credits_remaining",
                )
            },
        }
    )
    for name, value in _end_headers(generation, end).items():
        response[name] = value
    return response


# --- The OpenAPI description ---------------------------------------------------------------

_ERRORS = {400: None, 401: None, 402: None, 403: None, 429: None, 502: None, 504: None}


def openapi() -> oa.Fragment:
    usage = {
        name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    usage.update(credits_charged={"type": "number"}, credits_remaining={"type": "number"})
    completion = oa.obj(
        {
            "id": oa.string(format="uuid"),
            "content": oa.string(),
            "model": oa.string(),
            "cache_status": oa.string(choices=("HIT", "MISS")),
            "finish_reason": oa.string(),
            "usage": oa.obj(usage),
        }
    )
    stream = oa.stream(
        'One `data: {"content": "<token>"}` event per token, then `event: usage` '
        "(prompt/completion/total tokens, credits_charged, credits_remaining, model, "
        "cache_status, finish_reason), then `data: [DONE]`. A failure after the first token "
        "is `event: error` `{code, message, retryable, request_id}`, then the usage event and "
        "`[DONE]`. Headers: `x-regpilot-model`, `x-cache-status`, `x-regpilot-prompt-tokens`, "
        "`x-credits-remaining`, `x-governor-*`."
    )
    body = REGPILOT_REQUEST
    return oa.Fragment(
        paths={
            **openapi_paths("ai_chat", "ai-chat", "/api/ai/chat/streams/{stream_id}", "Error", 400),
            "/api/ai/chat": {
                "post": oa.operation(
                    "ai_chat_stream",
                    "ai-chat",
                    "Streaming chat with routing, governor and credits",
                    {"200": stream, **oa.errors("Error", _ERRORS)},
                    body=body,
                )
            },
            "/api/ai/chat/complete": {
                "post": oa.operation(
                    "ai_chat_complete",
                    "ai-chat",
                    "The same chat answered as one JSON object, every figure also a header",
                    {"200": oa.json_response("AiChatCompletion"), **oa.errors("Error", _ERRORS)},
                    body=body,
                )
            },
        },
        requests=(body,),
        schemas={"AiChatCompletion": completion},
    )
