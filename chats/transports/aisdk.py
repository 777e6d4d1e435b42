"""``POST /api/chat``, the Vercel AI SDK UI message stream (docs/wire-formats.md: AI SDK chat).

Chunks, each ``data: <JSON>``: ``start`` (messageId, messageMetadata with the chat id),
then per model step ``start-step``, ``text-start``, ``text-delta``…, ``text-end``, the
step's tool calls (``tool-input-start``, ``tool-input-delta``…, ``tool-input-available``,
then for the server's own tools ``tool-output-available`` or ``tool-output-error``),
``finish-step``; then ``message-metadata`` (usage, model, chat id, credits), ``finish``,
``data: [DONE]``. A failure after the stream began is an ``error`` chunk (errorText), then
``finish`` with finishReason ``error``. The exchange is stored in a chat of the tenant:
``roomId``, else DefaultChatTransport's ``id``, else a new chat. CORS on every
answer.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from billing.models import Tenant
from chatproject import openapi_fragments as oa
from chatproject.errors import ApiError, ErrorCode
from chatproject.json_body import read_json
from chats import services, stream_log
from chats.engine import (
    ErrorEvent,
    Event,
    FinishedEvent,
    Generation,
    StepEvent,
    TokenEvent,
    ToolCallEvent,
    start_generation,
)
from chats.tool_loop import ToolResult, ToolStarted
from chats.transports.cors import cors
from chats.transports.encoding import credits_number
from chats.transports.endpoints import authenticate, endpoint, generation_request
from chats.transports.generation_headers import generation_headers
from chats.transports.generation_stream import generation_response
from chats.transports.requests import model_choice
from chats.transports.resume import (
    LAST_EVENT_ID,
    STOPPED,
    last_event_id,
    resume_response,
    stop_response,
)
from chats.transports.schemas.aisdk import AISDK_REQUEST, parse_aisdk
from chats.transports.schemas.readers import MAX_ID_LENGTH
from chats.transports.sse import DONE, sse
from tools.registry import Toolbox, request_toolbox

END_USER_ID = "ai-sdk"  # the end user that owns chats started over this API
STREAM_FORMAT = "aisdk"  # the stream log's name for this format's chunks
STREAM_HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "Connection": "keep-alive"}
# The engine reports OpenAI's names; the AI SDK accepts these in every version.
_AISDK_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
}


def _ui_chunk(chunk_type: str, **fields: Any) -> bytes:
    return sse({"type": chunk_type, **fields})


def _error_text(error: ApiError, request_id: str) -> str:
    return f"{error.message} ({error.code.value}; request id {request_id})"


def _metadata(
    generation: Generation, end: FinishedEvent | ErrorEvent, toolbox: Toolbox
) -> dict[str, Any]:
    usage = end.usage
    return {
        "chatId": str(generation.request.chat.pk) if generation.request.chat else None,
        "excludedTools": toolbox.excluded,
        "model": generation.model_name,
        "cacheStatus": generation.cache_status,
        "usage": {
            "inputTokens": usage.prompt_tokens,
            "outputTokens": usage.completion_tokens,
            "totalTokens": usage.total_tokens,
        },
        "creditsCharged": credits_number(end.credits_charged),
        "creditsRemaining": credits_number(end.credits_remaining),
    }


class _Steps:
    """Where the stream is within the current step: its text part, its tool calls."""

    def __init__(self, generation: Generation) -> None:
        self.message_id = generation.message_id
        self.server_tools = generation.request.server_tools
        self.step = 0
        self.text_id: str | None = None
        self.pending: dict[str, ToolCallEvent] = {}  # calls whose input is still streaming
        self.arguments: dict[str, str] = {}
        self.said_anything = False

    def text(self, delta: str) -> list[bytes]:
        chunks = []
        if self.text_id is None:
            self.text_id = f"text-{self.message_id}-{self.step}"
            chunks.append(_ui_chunk("text-start", id=self.text_id))
        self.said_anything = True
        return [*chunks, _ui_chunk("text-delta", id=self.text_id, delta=delta)]

    def close_text(self, *, always: bool = False) -> list[bytes]:
        """The text part's end; ``always``: an empty part if the answer said nothing."""
        if self.text_id is None and always and not self.said_anything:
            self.text_id = f"text-{self.message_id}-{self.step}"
            return [_ui_chunk("text-start", id=self.text_id), *self.close_text()]
        if self.text_id is None:
            return []
        text_id, self.text_id = self.text_id, None
        return [_ui_chunk("text-end", id=text_id)]

    def tool_piece(self, event: ToolCallEvent) -> list[bytes]:
        chunks = self.close_text()
        self.said_anything = True
        if event.first:
            self.pending[event.call_id] = event
            self.arguments[event.call_id] = ""
            chunks.append(
                _ui_chunk(
                    "tool-input-start",
                    toolCallId=event.call_id,
                    toolName=event.name,
                    **self._executed(event.name),
                )
            )
        if event.arguments:
            self.arguments[event.call_id] += event.arguments
            chunks.append(
                _ui_chunk(
                    "tool-input-delta", toolCallId=event.call_id, inputTextDelta=event.arguments
                )
            )
        return chunks

    def inputs_done(self) -> list[bytes]:
        """``tool-input-available`` (or ``tool-input-error`` for arguments that are not
        JSON) of every call of the step: the model has said all of them."""
        chunks = self.close_text()
        for call_id, call in self.pending.items():
            raw = self.arguments.pop(call_id) or "{}"
            fields = {"toolCallId": call_id, "toolName": call.name, **self._executed(call.name)}
            try:
                chunks.append(_ui_chunk("tool-input-available", input=json.loads(raw), **fields))
            except ValueError:
                error = "The model's arguments are not valid JSON."
                chunks.append(_ui_chunk("tool-input-error", input=raw, errorText=error, **fields))
        self.pending.clear()
        return chunks

    def result(self, result: ToolResult) -> list[bytes]:
        chunks = self.inputs_done()
        executed = {"providerExecuted": True}
        if result.error is None:
            output = _output(result.output or "")
            chunks.append(
                _ui_chunk(
                    "tool-output-available", toolCallId=result.call_id, output=output, **executed
                )
            )
        else:
            chunks.append(
                _ui_chunk(
                    "tool-output-error",
                    toolCallId=result.call_id,
                    errorText=result.error,
                    **executed,
                )
            )
        return chunks

    def next_step(self) -> list[bytes]:
        chunks = [*self.inputs_done(), _ui_chunk("finish-step"), _ui_chunk("start-step")]
        self.step += 1
        return chunks

    def _executed(self, name: str) -> dict[str, bool]:
        """Server tools are marked as run by the provider, so the client does not run them."""
        return {"providerExecuted": True} if name in self.server_tools else {}


def _output(text: str) -> Any:
    """A tool's result for the client: its JSON value, or the text when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _encode(
    generation: Generation, events: AsyncIterator[Event], toolbox: Toolbox
) -> AsyncGenerator[bytes, None]:
    chat = generation.request.chat
    start_metadata = {
        "chatId": str(chat.pk) if chat else None,
        "model": generation.model_name,
        "excludedTools": toolbox.excluded,
    }
    yield _ui_chunk("start", messageId=str(generation.message_id), messageMetadata=start_metadata)
    yield _ui_chunk("start-step")
    steps = _Steps(generation)
    async for event in events:
        if isinstance(event, TokenEvent):
            chunks = steps.text(event.text)
        elif isinstance(event, ToolCallEvent):
            chunks = steps.tool_piece(event)
        elif isinstance(event, ToolStarted):
            chunks = steps.inputs_done()
        elif isinstance(event, ToolResult):
            chunks = steps.result(event)
        elif isinstance(event, StepEvent):
            chunks = steps.next_step()
        else:
            chunks = [*steps.inputs_done(), *steps.close_text(always=True)]
            chunks.append(_ui_chunk("finish-step"))
            if isinstance(event, ErrorEvent):
                error_text = _error_text(event.error, generation.request.request_id)
                chunks.append(_ui_chunk("error", errorText=error_text))
            metadata = _metadata(generation, event, toolbox)
            chunks.append(_ui_chunk("message-metadata", messageMetadata=metadata))
            if isinstance(event, FinishedEvent):
                reason = _AISDK_FINISH_REASONS.get(event.finish_reason, "other")
            else:
                reason = "error"
            chunks.append(_ui_chunk("finish", finishReason=reason))
        for chunk in chunks:
            yield chunk
    yield DONE


@cors
@endpoint()
async def chat(request: HttpRequest) -> HttpResponseBase:
    tenant = await authenticate(request)
    body = parse_aisdk(read_json(request))
    key: str | uuid.UUID = body.room_id or body.chat_key or uuid.uuid4()
    opener = functools.partial(
        services.chat_open,
        tenant=tenant,
        key=key,
        fresh=not (body.room_id or body.chat_key),
        user_id=END_USER_ID,
        title=body.title,
        metadata={"source": "ai-sdk", "chat_key": body.chat_key, "artist_id": body.artist_id},
    )
    quality, model = model_choice(body.model)
    toolbox = await request_toolbox(
        tenant=tenant,
        project_id=body.project_id,
        client_tools=body.tools,
        exclude=body.exclude_tools,
    )
    generation = await start_generation(  # the chat: opened in admission, not kept if refused
        generation_request(
            request,
            tenant,
            body.messages,
            chat_opener=opener,
            quality=quality,
            model=model,
            tools=toolbox.client_tools,
            server_tools=toolbox.server_tools,
        )
    )
    chat = generation.request.chat
    assert chat is not None  # the admission opened it
    chat_id = str(chat.pk)
    headers = {**STREAM_HEADERS, "x-chat-id": chat_id, **generation_headers(generation)}
    headers["x-stream-id"] = generation.message_id.hex
    return await generation_response(
        generation,
        lambda events: _encode(generation, events, toolbox),
        headers=headers,
        resumable=STREAM_FORMAT,
    )


def _chat_ids(tenant: Tenant, key: str) -> list[str]:
    """The ids the chat a client calls ``key`` may have (see ``services.conversation_chat_id``):
    the tenant's own chat of that id, or the one derived from the key. Only the tenant's
    own streams are looked up under them."""
    if not key or len(key) > MAX_ID_LENGTH:
        problem = f"Must be the chat's id (1 to {MAX_ID_LENGTH} characters)."
        raise ApiError(ErrorCode.VALIDATION_ERROR, problem, details={"chatId": [problem]})
    try:
        ids = [str(uuid.UUID(key))]
    except ValueError:
        ids = []
    return [*ids, str(services.conversation_chat_id(tenant, ids[0] if ids else key))]


def _lost(error: ApiError) -> list[bytes]:
    return [
        _ui_chunk("error", errorText=error.message),
        _ui_chunk("finish", finishReason="error"),
        DONE,
    ]


@cors
@endpoint(methods=("GET",))
async def resume(request: HttpRequest, chat_id: str) -> HttpResponseBase:
    """``GET /api/chat/<chatId>/stream`` (``useChat({resume: true})``): the chat's active
    stream from its first chunk (or after ``Last-Event-ID``), then live to its end, from
    whichever process runs it; 204 when the chat has none."""
    tenant = await authenticate(request, rate_limit=True)
    after = last_event_id(request)
    log_id = await stream_log.active_stream(tenant.pk, STREAM_FORMAT, _chat_ids(tenant, chat_id))
    if log_id is None:
        return HttpResponse(status=204)
    try:
        return await resume_response(
            tenant=tenant,
            stream_format=STREAM_FORMAT,
            log_id=log_id,
            after=after,
            lost=_lost,
            headers=STREAM_HEADERS,
        )
    except ApiError as error:
        if error.code == ErrorCode.NOT_FOUND:  # it ended just now
            return HttpResponse(status=204)
        raise


@cors
@endpoint()
async def stop(request: HttpRequest, chat_id: str) -> HttpResponseBase:
    """``POST /api/chat/<chatId>/stop``: end the chat's active stream (stored
    ``cancelled``, settled for what it had), whichever process runs it. 200 with
    ``{"messageId", "status"}`` once it has ended; 204 when the chat has none."""
    tenant = await authenticate(request, rate_limit=True)
    log_id = await stream_log.active_stream(tenant.pk, STREAM_FORMAT, _chat_ids(tenant, chat_id))
    if log_id is None:
        return HttpResponse(status=204)
    return await stop_response(tenant, log_id)


# --- The OpenAPI description ---------------------------------------------------------------


def openapi() -> oa.Fragment:
    stream = oa.stream(
        "The Vercel AI SDK UI message stream (`x-vercel-ai-ui-message-stream: v1`): `data:` "
        "JSON chunks typed `start`, `start-step`, `text-start`, `text-delta`…, `text-end`, "
        "the tool chunks, `finish-step`, `message-metadata`, `finish` (an `error` chunk before "
        "`message-metadata` on failure), then `data: [DONE]`. The exchange is stored in the "
        "chat (`x-chat-id`). CORS headers on every answer; OPTIONS answers 200."
    )
    errors = {400: None, 401: None, 402: None, 403: None, 429: None}
    chat_id = oa.path_parameter("chat_id", "The chat's id (useChat's `id`).")
    return oa.Fragment(
        paths={
            "/api/chat": {
                "post": oa.operation(
                    "ai_sdk_chat",
                    "ai-sdk",
                    "AI SDK UI message stream",
                    {"200": stream, **oa.errors("Error", errors)},
                    body=AISDK_REQUEST,
                )
            },
            "/api/chat/{chat_id}/stream": {
                "get": oa.operation(
                    "ai_sdk_chat_resume",
                    "ai-sdk",
                    "Resume the chat's running stream: from its first chunk, then live",
                    {
                        "200": oa.stream("The chat's running stream, from its first chunk."),
                        "204": {
                            "description": "No stream runs in this chat.",
                            "headers": oa.RATE_HEADERS,
                        },
                        **oa.errors("Error", {400: None, 401: None, 429: None}),
                    },
                    parameters=[chat_id, LAST_EVENT_ID],
                )
            },
            "/api/chat/{chat_id}/stop": {
                "post": oa.operation(
                    "ai_sdk_chat_stop",
                    "ai-sdk",
                    "Stop the chat's running stream: stored cancelled, settled for what it had",
                    {
                        "200": oa.json_response("StreamStopped"),
                        "204": {
                            "description": "No stream runs in this chat.",
                            "headers": oa.RATE_HEADERS,
                        },
                        **oa.errors("Error", {400: None, 401: None, 429: None}),
                    },
                    parameters=[chat_id],
                )
            },
        },
        requests=(AISDK_REQUEST,),
        schemas={"StreamStopped": STOPPED},
    )
