"""Project document chat (docs/wire-formats.md: document chat).

``POST /api/v1/chat/stream``: ``event: message`` ``{"token", "done": false}`` per token,
then ``event: done`` ``{"full_response", "document_types_used", "metadata", "done": true}``,
or ``event: error`` ``{"error", "code", "retryable"}``. The conversation is a chat of the
tenant (created on first use, see ``chats.services.chat_open``) and the exchange is stored
in it. The system prompt comes from the knowledge base (``knowledge.services``, called by
the engine once it knows the model); a failed search is an ``event: error`` with
``RAG_RETRIEVAL_ERROR`` in a 200 stream. ``metadata.save_as`` keeps the answer in the
project's knowledge base (the engine's ``keep_answer``).

``POST /api/v1/chat/generate`` (legacy): ``event: token`` ``{"token", "index"}``, then
``event: done`` ``{"total_tokens", "duration_ms"}`` or ``event: error`` ``{"code",
"message"}``; not stored. ``POST /api/v1/chat/message`` is retired: 400 (after the key
and the rate limit are checked, like any request).

Errors before the stream use the product's envelope with this format's own statuses: 422
for validation, 403 for a bad key.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from billing.models import Tenant
from chatproject import openapi_fragments as oa
from chatproject.errors import ApiError, ErrorCode, error_response
from chatproject.json_body import read_json
from chatproject.request_id import request_id_of
from chats import services
from chats.engine import ErrorEvent, Event, FinishedEvent, Generation, TokenEvent, start_generation
from chats.transports.encoding import credits_number
from chats.transports.endpoints import authenticate, endpoint, generation_request
from chats.transports.generation_headers import generation_headers, stream_headers
from chats.transports.generation_stream import generation_response
from chats.transports.resume import last_event_id, openapi_paths, resume_response, stream_id
from chats.transports.schemas.docgen import (
    DOC_CHAT_REQUEST,
    DOC_GENERATE_REQUEST,
    parse_doc_chat,
    parse_doc_generate,
)
from chats.transports.sse import sse
from chats.transports.streaming import event_stream
from knowledge import services as knowledge_services
from knowledge.retrieval import RetrievedContext
from tools.registry import request_toolbox

END_USER_ID = "docgen"  # the end user that owns conversations started over this API
RESUME_PATH = "/api/v1/chat/streams/{stream_id}"
_STATUS = {ErrorCode.UNAUTHORIZED: 403, ErrorCode.VALIDATION_ERROR: 422}


def http_error(error: ApiError) -> HttpResponse:
    if error.status == 413:  # a body over the size limit keeps its own status
        return error_response(error)
    return error_response(error, status=_STATUS.get(error.code))


def _stream_error(error: ApiError) -> tuple[str, str]:
    """The format's three codes (and SERVICE_UNAVAILABLE while the database is down):
    upstream trouble of any kind is LLM_CONNECTION_ERROR, with a message that says which
    kind."""
    if error.code == ErrorCode.LLM_TIMEOUT:
        return ErrorCode.LLM_CONNECTION_ERROR, f"The model timed out: {error.message}"
    if error.code == ErrorCode.LLM_PROVIDER_ERROR:
        return ErrorCode.LLM_CONNECTION_ERROR, f"The model provider failed: {error.message}"
    if error.code in (
        ErrorCode.LLM_CONNECTION_ERROR,
        ErrorCode.RAG_RETRIEVAL_ERROR,
        ErrorCode.SERVICE_UNAVAILABLE,
    ):
        return error.code, error.message
    return ErrorCode.STREAM_ERROR, error.message


def _duration_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _knowledge_prompt(tenant: Tenant, body, **client: Any) -> Callable[[int], RetrievedContext]:
    """The engine's ``system_prompt`` seam: the knowledge base's prompt for this body, in
    the tokens the model leaves for it (``client``: what the client put into it)."""
    return lambda budget: knowledge_services.generation_context(
        tenant=tenant,
        query=body.message,
        project_id=body.project_id,
        document_type=body.document_type,
        budget_tokens=budget,
        **client,
    )


def _keep_in_project(tenant: Tenant, body) -> Callable[[str], dict[str, Any]]:
    """The engine's ``keep_answer`` seam: the answer kept at ``metadata.save_as``."""
    return lambda content: knowledge_services.generated_answer_keep(
        tenant=tenant,
        project_external_id=body.project_id,
        path=body.save_as,
        document_type=body.document_type,
        content=content,
    )


# --- POST /api/v1/chat/stream ---------------------------------------------------------------


def _error_event(error: ApiError, request_id: str) -> bytes:
    code, message = _stream_error(error)
    data = {"error": message, "code": str(code), "retryable": error.retryable}
    return sse({**data, "request_id": request_id}, event="error")


async def _only_error(error: ApiError, request_id: str) -> AsyncGenerator[bytes, None]:
    yield _error_event(error, request_id)


async def _encode_stream(
    generation: Generation,
    events: AsyncIterator[Event],
    conversation_id: str,
    started: float,
) -> AsyncGenerator[bytes, None]:
    request = generation.request
    context = generation.system_prompt
    assert isinstance(context, RetrievedContext)
    async for event in events:
        if isinstance(event, TokenEvent):
            yield sse({"token": event.text, "done": False}, event="message")
        elif isinstance(event, FinishedEvent):
            metadata: dict[str, Any] = {
                "conversation_id": conversation_id,
                "chat_id": str(request.chat.pk) if request.chat else None,
                "message_id": str(event.message_id),
                "model": generation.model_name,
                "finish_reason": event.finish_reason,
                "usage": event.usage.to_dict(),
                "credits_charged": credits_number(event.credits_charged),
                "credits_remaining": credits_number(event.credits_remaining),
                "sources": sorted({chunk.source for chunk in context.chunks}),
                **_project_notice(context.project_found),
                "duration_ms": _duration_ms(started),
                "request_id": request.request_id,
            }
            if request.keep_answer is not None:
                metadata["saved_document"] = event.kept
            done = {
                "full_response": event.content,
                "document_types_used": context.document_types_used,
                "metadata": metadata,
                "done": True,
            }
            yield sse(done, event="done")
        elif isinstance(event, ErrorEvent):
            yield _error_event(event.error, request.request_id)
        # Tool calls and results of search_knowledge are the server's own: not streamed.


def _project_notice(found: bool | None) -> dict[str, Any]:
    """Whether the ``project_id`` sent named a project of the tenant: an unknown one is
    answered, without knowledge-base sources, and the client is told why there are none."""
    if found is None:
        return {}
    if found:
        return {"project_found": True}
    return {
        "project_found": False,
        "warnings": ["No project with this project_id for your key: no sources were used."],
    }


@endpoint(on_error=http_error)
async def chat_stream(request: HttpRequest) -> HttpResponseBase:
    started = time.monotonic()
    tenant = await authenticate(request)
    body = parse_doc_chat(read_json(request))
    conversation_id = body.conversation_id or str(uuid.uuid4())
    opener = functools.partial(
        services.chat_open,
        tenant=tenant,
        key=conversation_id,
        fresh=body.conversation_id is None,
        user_id=END_USER_ID,
        title=body.message[:100],
        metadata={
            "source": "docgen",
            "conversation_id": conversation_id,
            "project_id": body.project_id,
            "metadata": body.metadata,
        },
    )
    # The model may search the project's knowledge base beyond what the prompt holds.
    toolbox = await request_toolbox(tenant=tenant, project_id=body.project_id)
    try:
        generation = await start_generation(
            generation_request(
                request,
                tenant,
                [*body.history, {"role": "user", "content": body.message}],
                system_prompt=_knowledge_prompt(
                    tenant,
                    body,
                    user_name=body.user_name,
                    existing_documents=body.existing_documents,
                ),
                chat_opener=opener,  # opened in the admission, not kept if refused
                keep_answer=_keep_in_project(tenant, body) if body.save_as else None,
                server_tools=toolbox.server_tools,
            )
        )
    except ApiError as error:
        if error.code != ErrorCode.RAG_RETRIEVAL_ERROR:
            raise
        return event_stream(_only_error(error, request_id_of(request)))
    chat = generation.request.chat
    assert chat is not None  # the admission opened it
    return await generation_response(
        generation,
        lambda events: _encode_stream(generation, events, conversation_id, started),
        headers={
            "x-chat-id": str(chat.pk),
            **generation_headers(generation),
            **stream_headers(generation, RESUME_PATH),
        },
        resumable="docgen",
    )


@endpoint(methods=("GET", "DELETE"), on_error=http_error)
async def resume(request: HttpRequest, stream: str) -> HttpResponseBase:
    """``GET /api/v1/chat/streams/<id>``: a stream of ``POST /api/v1/chat/stream`` again,
    after its ``Last-Event-ID`` (see :mod:`chats.transports.resume`)."""
    tenant = await authenticate(request, rate_limit=True)
    request_id = request_id_of(request)
    return await resume_response(
        tenant=tenant,
        stream_format="docgen",
        method=request.method,
        log_id=stream_id(stream),
        after=last_event_id(request),
        lost=lambda error: [_error_event(error, request_id)],
    )


# --- POST /api/v1/chat/generate (legacy) -----------------------------------------------------


def _legacy_error_event(error: ApiError) -> bytes:
    code, message = _stream_error(error)
    return sse({"code": str(code), "message": message}, event="error")


async def _legacy_only_error(error: ApiError) -> AsyncGenerator[bytes, None]:
    yield _legacy_error_event(error)


async def _encode_legacy(
    events: AsyncIterator[Event], started: float
) -> AsyncGenerator[bytes, None]:
    async for event in events:
        if isinstance(event, TokenEvent):
            yield sse({"token": event.text, "index": event.index}, event="token")
        elif isinstance(event, FinishedEvent):
            done = {
                "total_tokens": event.usage.completion_tokens,
                "duration_ms": _duration_ms(started),
            }
            yield sse(done, event="done")
        elif isinstance(event, ErrorEvent):  # tool events: this format has none
            yield _legacy_error_event(event.error)


@endpoint(on_error=http_error)
async def generate(request: HttpRequest) -> HttpResponseBase:
    started = time.monotonic()
    tenant = await authenticate(request)
    body = parse_doc_generate(read_json(request))
    try:
        generation = await start_generation(
            generation_request(
                request,
                tenant,
                [*body.history, {"role": "user", "content": body.message}],
                system_prompt=_knowledge_prompt(tenant, body),
            )
        )
    except ApiError as error:
        if error.code != ErrorCode.RAG_RETRIEVAL_ERROR:
            raise
        return event_stream(_legacy_only_error(error))
    return await generation_response(
        generation,
        lambda events: _encode_legacy(events, started),
        headers=generation_headers(generation),
    )


# --- POST /api/v1/chat/message (retired) ------------------------------------------------------


@endpoint(on_error=http_error)
async def message(request: HttpRequest) -> HttpResponseBase:
    await authenticate(request, rate_limit=True)
    error = ApiError(
        ErrorCode.VALIDATION_ERROR,
        "POST /api/v1/chat/message is retired: use POST /api/v1/chat/stream (text/event-stream).",
        details={"endpoint": ["/api/v1/chat/stream"]},
        headers={"Link": '</api/v1/chat/stream>; rel="alternate"'},
    )
    return error_response(error, status=400)  # the format says 400 here, not its usual 422


# --- The OpenAPI description ---------------------------------------------------------------

_ERRORS = {
    403: "Bad key (UNAUTHORIZED), or the governor's refusal.",
    422: None,
    402: None,
    429: None,
}


def openapi() -> oa.Fragment:
    chat_stream = oa.stream(
        "Named events, each `event: <name>` and `data: <JSON>`. Per token "
        '`message` `{"token", "done": false}`; at the end `done` `{"full_response", '
        '"document_types_used", "metadata", "done": true}`, or `error` `{"error", "code", '
        '"retryable", "request_id"}` with code `LLM_CONNECTION_ERROR`, '
        "`RAG_RETRIEVAL_ERROR`, `SERVICE_UNAVAILABLE` or `STREAM_ERROR`."
    )
    generate_stream = oa.stream(
        "Named events, each `event: <name>` and `data: <JSON>`. Per token "
        '`token` `{"token", "index"}`; at the end `done` `{"total_tokens", '
        '"duration_ms"}` or `error` `{"code", "message"}`.'
    )
    retired = {
        400: "Always: the endpoint is retired (see the `Link` header).",
        403: "Bad key.",
        429: None,
    }
    return oa.Fragment(
        paths={
            **openapi_paths(
                "docgen_chat", "docgen", "/api/v1/chat/streams/{stream_id}", "Error", 422
            ),
            "/api/v1/chat/stream": {
                "post": oa.operation(
                    "docgen_chat_stream",
                    "docgen",
                    "Project document chat",
                    {"200": chat_stream, **oa.errors("Error", _ERRORS)},
                    body=DOC_CHAT_REQUEST,
                )
            },
            "/api/v1/chat/generate": {
                "post": oa.operation(
                    "docgen_chat_generate",
                    "docgen",
                    "Older document generation stream",
                    {"200": generate_stream, **oa.errors("Error", _ERRORS)},
                    body=DOC_GENERATE_REQUEST,
                )
            },
            "/api/v1/chat/message": {
                "post": oa.operation(
                    "docgen_chat_message",
                    "docgen",
                    "Retired: use /api/v1/chat/stream",
                    oa.errors("Error", retired),
                    deprecated=True,
                )
            },
        },
        requests=(DOC_CHAT_REQUEST, DOC_GENERATE_REQUEST),
    )
