"""Seed 003: ``POST /api/chat``, the Vercel AI SDK UI message stream (``AISDK.md``).

Chunks, each ``data: <JSON>``: ``start`` (messageId, messageMetadata with the chat id),
``start-step``, ``text-start``, ``text-delta``…, ``text-end``, ``finish-step``,
``message-metadata`` (usage, model, chat id, credits), ``finish``, then ``data: [DONE]``.
A failure after the stream began is an ``error`` chunk (errorText), then ``finish`` with
finishReason ``error``. The exchange is stored in a chat of the tenant: ``roomId`` (the
seed), else DefaultChatTransport's ``id``, else a new chat. CORS on every answer.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse

from chatproject.errors import ApiError
from chatproject.json_body import read_json
from chats.engine import ErrorEvent, Event, FinishedEvent, Generation, TokenEvent, start_generation
from chats.transports import schemas
from chats.transports.sse import (
    DONE,
    authenticate,
    conversation_chat,
    cors,
    credits_number,
    endpoint,
    generation_headers,
    generation_request,
    generation_response,
    model_choice,
    sse,
)

END_USER_ID = "ai-sdk"  # the end user that owns chats started over this API
STREAM_HEADERS = {"x-vercel-ai-ui-message-stream": "v1", "Connection": "keep-alive"}
# The engine reports OpenAI's names; the AI SDK accepts these in every version.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
}


def _chunk(chunk_type: str, **fields: Any) -> bytes:
    return sse({"type": chunk_type, **fields})


def _error_text(error: ApiError, request_id: str) -> str:
    return f"{error.message} ({error.code.value}; request id {request_id})"


def _metadata(generation: Generation, end: FinishedEvent | ErrorEvent) -> dict[str, Any]:
    usage = end.usage
    return {
        "chatId": str(generation.request.chat.pk) if generation.request.chat else None,
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


async def _encode(generation: Generation, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    chat = generation.request.chat
    text_id = f"text-{generation.message_id}"
    start_metadata = {"chatId": str(chat.pk) if chat else None, "model": generation.model_name}
    yield _chunk("start", messageId=str(generation.message_id), messageMetadata=start_metadata)
    yield _chunk("start-step")
    yield _chunk("text-start", id=text_id)
    async for event in events:
        if isinstance(event, TokenEvent):
            yield _chunk("text-delta", id=text_id, delta=event.text)
            continue
        yield _chunk("text-end", id=text_id)
        yield _chunk("finish-step")
        if isinstance(event, ErrorEvent):
            error_text = _error_text(event.error, generation.request.request_id)
            yield _chunk("error", errorText=error_text)
        yield _chunk("message-metadata", messageMetadata=_metadata(generation, event))
        if isinstance(event, FinishedEvent):
            reason = FINISH_REASONS.get(event.finish_reason, "other")
        else:
            reason = "error"
        yield _chunk("finish", finishReason=reason)
    yield DONE


@cors
@endpoint()
async def chat(request: HttpRequest) -> HttpResponse:
    tenant = await authenticate(request)
    body = schemas.parse_aisdk(read_json(request))
    key: str | uuid.UUID = body.room_id or body.chat_key or uuid.uuid4()
    opener = functools.partial(
        conversation_chat,
        tenant=tenant,
        key=key,
        fresh=not (body.room_id or body.chat_key),
        end_user_id=END_USER_ID,
        title=body.messages[-1]["content"][:100],
        metadata={"source": "ai-sdk", "chat_key": body.chat_key, "artist_id": body.artist_id},
    )
    quality, model = model_choice(body.model)
    generation = await start_generation(  # the chat: opened in admission, not kept if refused
        generation_request(
            request, tenant, body.messages, chat_opener=opener, quality=quality, model=model
        )
    )
    chat_id = str(generation.request.chat.pk)
    headers = {**STREAM_HEADERS, "x-chat-id": chat_id, **generation_headers(generation)}
    return await generation_response(
        generation, lambda events: _encode(generation, events), headers=headers
    )


@cors
@endpoint(methods=("GET",))
async def resume(request: HttpRequest, chat_id: str) -> HttpResponse:
    """Resuming a stream (``GET /api/chat/<id>/stream``): streams are not kept, so there
    is never one to resume."""
    await authenticate(request, rate_limit=True)
    return HttpResponse(status=204)
