"""What the HTTP streaming transports share: SSE framing, the streaming response (with
keep-alive comments and prompt cancellation on disconnect), authentication, JSON bodies,
error handling around a view, the response headers of a generation, and chat lookup.

A transport view is: parse the body (``schemas``), build a ``GenerationRequest``
(:func:`generation_request`), ``await start_generation(...)`` (refusals raise
``ApiError`` → an HTTP status), then return :func:`event_stream` over an async generator
that encodes the engine's events in the transport's own format.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from billing.authentication import presented_key
from billing.models import Tenant
from billing.services import api_key_authenticate
from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode, error_response
from chats.catalog import QUALITY_TIERS
from chats.engine import Generation, GenerationRequest
from chats.models import Chat
from chats.services import end_user_get_or_create

logger = logging.getLogger(__name__)

# --- Framing -------------------------------------------------------------------------------

KEEPALIVE = b": keep-alive\n\n"


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sse(data: Any, *, event: str | None = None) -> bytes:
    """One server-sent event: ``data`` as JSON (a ``str`` is sent as it is)."""
    payload = data if isinstance(data, str) else to_json(data)
    lines = [f"event: {event}"] if event else []
    lines.extend(f"data: {line}" for line in payload.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


DONE = sse("[DONE]")


def credits_text(value: Decimal | None) -> str:
    """A credit amount for a header: plain decimal notation, no trailing zeros."""
    if value is None:
        return ""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def credits_number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


# --- The streaming response ----------------------------------------------------------------

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _produce(chunks: AsyncIterator[bytes], queue: asyncio.Queue) -> None:
    try:
        async with contextlib.aclosing(chunks) as source:
            async for chunk in source:
                await queue.put(chunk)
    except Exception as exc:
        await queue.put(_Failed(exc))
        return
    await queue.put(_END)


async def with_keepalive(chunks: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """``chunks``, plus a keep-alive comment whenever none came for ``interval`` seconds.

    The chunks are produced in a task of their own: the engine's generator (and the idle
    timeout it keeps with ``asyncio.timeout``) must stay in one task while this one waits
    with a timeout of its own. When the client disconnects, Django cancels the task
    iterating this generator; the producer is cancelled in turn and awaited, so the
    engine stores the exchange as ``cancelled`` and settles its credits before the
    request is over.
    """
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)  # backpressure: no token piles up here
    producer = asyncio.create_task(_produce(chunks, queue))
    try:
        yield b""  # sends the response headers now, not with the first token
        while True:
            try:
                async with asyncio.timeout(interval if interval > 0 else None):
                    item = await queue.get()
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        if not producer.done():
            producer.cancel()
        # asyncio.wait never cancels what it waits for: a second cancellation of this task
        # cannot interrupt the engine's finalisation (which is shielded as well).
        await asyncio.wait({producer})
        if not producer.cancelled():
            producer.exception()  # retrieved: errors were delivered through the queue


def event_stream(
    chunks: AsyncIterator[bytes],
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = "text/event-stream",
) -> StreamingHttpResponse:
    """A streaming response over ``chunks``: nothing buffered, keep-alives when idle."""
    response = StreamingHttpResponse(
        with_keepalive(chunks, settings.SSE_KEEPALIVE_SECONDS), content_type=content_type
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


# --- Request side --------------------------------------------------------------------------


async def authenticate(request: HttpRequest) -> Tenant:
    """The tenant of the request's key (``X-API-Key`` or Bearer); raises UNAUTHORIZED."""
    api_key = await db_call(api_key_authenticate, presented_key(request))
    return api_key.tenant


def read_json(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object; anything else is a VALIDATION_ERROR."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "The request body is too large.",
            details={"body": [f"At most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."]},
        ) from None
    if not raw.strip():
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "The request body is empty; send a JSON object.",
            details={"body": ["This field is required."]},
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "The request body is not valid JSON.",
            details={"body": [str(exc)]},
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "The request body must be a JSON object.",
            details={"body": ["Must be an object."]},
        )
    return body


def wants_cache(request: HttpRequest) -> bool:
    """False when the client sent ``Cache-Control: no-cache`` (or ``no-store``)."""
    directives = request.headers.get("Cache-Control", "").lower()
    return "no-cache" not in directives and "no-store" not in directives


def model_choice(name: str | None) -> tuple[str | None, str | None]:
    """``(quality, model)`` for a client's model name: a tier name routes like ``quality``."""
    if name in QUALITY_TIERS:
        return name, None
    return None, name


def generation_request(
    request: HttpRequest, tenant: Tenant, messages: list[dict[str, str]], **options: Any
) -> GenerationRequest:
    """A GenerationRequest carrying the request's id, cache preference and idempotency key."""
    options.setdefault("use_cache", wants_cache(request))
    options.setdefault("idempotency_key", request.headers.get("Idempotency-Key", "")[:255])
    return GenerationRequest(
        tenant=tenant,
        messages=messages,
        request_id=getattr(request, "request_id", None) or uuid.uuid4().hex,
        **options,
    )


# --- Response headers of a generation ------------------------------------------------------


def generation_headers(generation: Generation) -> dict[str, str]:
    """The governor's and the rate limiter's headers."""
    headers = dict(generation.decision.headers())
    if generation.rate_limit is not None:
        headers.update(generation.rate_limit.headers())
    if generation.replayed:
        headers["Idempotent-Replayed"] = "true"
    return headers


def events_of(generation: Generation) -> contextlib.aclosing:
    """``async with events_of(g) as events``: the engine's events, closed however the
    consumer stops, so the exchange is finalised in this task (a plain ``async for``
    would leave an abandoned generator to the garbage collector)."""
    return contextlib.aclosing(generation.events())


def credits_remaining(generation: Generation, tenant: Tenant) -> Decimal:
    """The balance as known before the stream: after the hold, or (no hold: a cache hit)
    the balance read when the key was checked."""
    remaining = generation.credits_remaining
    return tenant.credit_balance if remaining is None else remaining


# --- Views ---------------------------------------------------------------------------------

ErrorEncoder = Callable[[ApiError], HttpResponse]
View = Callable[..., Awaitable[HttpResponse]]


def endpoint(
    *, methods: Iterable[str] = ("POST",), on_error: ErrorEncoder = error_response
) -> Callable[[View], View]:
    """An async, CSRF-exempt API view whose ApiErrors (and bugs) are answered by
    ``on_error`` in the transport's own format."""
    allowed = tuple(methods)

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in allowed:
                    raise ApiError(
                        ErrorCode.METHOD_NOT_ALLOWED,
                        f"Method {request.method} is not allowed here.",
                        headers={"Allow": ", ".join(allowed)},
                    )
                return await view(request, *args, **kwargs)
            except ApiError as error:
                return on_error(error)
            except Exception:
                request_id = getattr(request, "request_id", "-")
                logger.exception("unexpected error before streaming")
                return on_error(
                    ApiError(ErrorCode.STREAM_ERROR, f"Internal error (request id {request_id}).")
                )

        return csrf_exempt(wrapper)

    return decorator


def cors_headers(request: HttpRequest) -> dict[str, str]:
    """CORS headers for browser clients (``CORS_ALLOWED_ORIGINS``; ``*`` allows any)."""
    allowed = settings.CORS_ALLOWED_ORIGINS
    origin = request.headers.get("Origin", "")
    if "*" in allowed:
        allow_origin = "*"
    elif origin in allowed:
        allow_origin = origin
    else:
        return {"Vary": "Origin"}
    headers = {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": (
            "content-type, x-api-key, authorization, x-request-id, cache-control"
        ),
        "Access-Control-Expose-Headers": "x-request-id, x-vercel-ai-ui-message-stream, "
        "x-chat-id, retry-after",
        "Access-Control-Max-Age": "86400",
    }
    if allow_origin != "*":
        headers["Vary"] = "Origin"
    return headers


def cors(view: View) -> View:
    """CORS headers on every answer of ``view`` (errors included); ``OPTIONS`` → 200."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "OPTIONS":
            response = HttpResponse(status=200)
        else:
            response = await view(request, *args, **kwargs)
        for name, value in cors_headers(request).items():
            response[name] = value
        return response

    return csrf_exempt(wrapper)


# --- Chats named by the client -------------------------------------------------------------

# Client-chosen conversation keys map to chat ids in this namespace (with the tenant's id),
# so the same key always finds the same chat and two tenants' keys never meet.
CONVERSATION_NAMESPACE = uuid.UUID("6f1c2d4e-8a43-5b9e-9c1d-3f2b7a6e5d10")


def conversation_chat_id(tenant: Tenant, key: str) -> uuid.UUID:
    return uuid.uuid5(CONVERSATION_NAMESPACE, f"{tenant.pk}:{key}")


def conversation_chat(
    *,
    tenant: Tenant,
    key: str | uuid.UUID,
    end_user_id: str,
    title: str = "",
    metadata: dict[str, Any] | None = None,
) -> Chat:
    """The tenant's chat for a client-chosen key, created on first use. Sync (database).

    A key that is a UUID is the chat's own id (one made through the REST API, or a new
    one the client chose). Any other key, or a UUID another tenant already uses, maps
    to ``uuid5(tenant, key)``: stable across requests and revealing nothing about other
    tenants' chats.
    """
    candidates = []
    if isinstance(key, uuid.UUID):
        candidates.append(key)
    else:
        with contextlib.suppress(ValueError):
            candidates.append(uuid.UUID(key))
    candidates.append(conversation_chat_id(tenant, str(key)))
    for chat_id in candidates:
        chat = _chat_get_or_create(tenant, chat_id, end_user_id, title, metadata or {})
        if chat is not None:
            return chat
    # Both ids taken by other tenants: only a deliberate collision gets here.
    return _chat_get_or_create(tenant, uuid.uuid4(), end_user_id, title, metadata or {})


def _chat_get_or_create(
    tenant: Tenant, chat_id: uuid.UUID, end_user_id: str, title: str, metadata: dict
) -> Chat | None:
    """The tenant's chat ``chat_id``, created if no chat has that id; None if another
    tenant's chat has it."""
    for _ in range(2):
        existing = Chat.objects.filter(pk=chat_id).only("id", "tenant_id").first()
        if existing is not None:
            return existing if existing.tenant_id == tenant.pk else None
        end_user, _ = end_user_get_or_create(tenant=tenant, external_id=end_user_id)
        try:
            with transaction.atomic():
                return Chat.objects.create(
                    id=chat_id,
                    tenant=tenant,
                    end_user=end_user,
                    title=title[:255],
                    metadata=metadata,
                )
        except IntegrityError:  # created concurrently: read it again
            continue
    return None
