"""Resuming a stream: what the streaming transports share.

A resumable stream (see ``generation_stream.generation_response(resumable=...)``) keeps
every chunk it sends in the stream log, each sent with its position as the SSE ``id``, and
names itself in the ``x-stream-id`` and ``x-stream-url`` headers. A client that lost it
sends ``GET`` to that URL, with ``Last-Event-ID`` set to the last id it had (or none, for
all of it), from any server process: it gets the chunks after that id, then the live ones,
to the end, in the format the stream was started in. A stream that ended with nothing
after that id answers 204. ``DELETE`` on that URL stops the stream (stored ``cancelled``,
settled).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from billing.models import Tenant
from chatproject import openapi_fragments as oa
from chatproject.errors import ApiError, ErrorCode
from chats import stream_log
from chats.stream_log import LogTrimmed, WireChunk
from chats.transports.streaming import Producer, event_stream

MAX_EVENT_ID = 2**31 - 1
# What a resumed stream sends when its log breaks off: the format's error chunks.
LostEncoder = Callable[[ApiError], list[bytes]]


def last_event_id(request: HttpRequest) -> int:
    """The ``Last-Event-ID`` the client sent: -1 (from the first chunk) when none."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return -1
    if len(raw) > 10 or not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_EVENT_ID:
        problem = "Must be the id of an event of this stream: a whole number from 0."
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Invalid Last-Event-ID header. {problem}",
            details={"Last-Event-ID": [problem]},
        )
    return int(raw)


def stream_id(raw: str) -> str:
    """A stream id from a URL (the ``x-stream-id`` header; a UUID in any spelling, or an
    OpenAI ``chatcmpl-`` id); raises VALIDATION_ERROR for anything else."""
    value = raw.strip().lower().removeprefix("chatcmpl-")
    try:
        if len(value) > 45:
            raise ValueError
        return uuid.UUID(value).hex
    except ValueError:
        problem = "Not a stream id: use the x-stream-id header of the stream."
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, problem, details={"stream_id": [problem]}
        ) from None


def not_found() -> ApiError:
    return ApiError(
        ErrorCode.NOT_FOUND,
        "No stream with this id to resume: it is not yours, or it ended too long ago.",
    )


async def resume_response(
    *,
    tenant: Tenant,
    stream_format: str,
    log_id: str,
    after: int,
    lost: LostEncoder,
    headers: dict[str, str] | None = None,
    method: str | None = "GET",
) -> HttpResponseBase:
    """The tenant's stream ``log_id`` in ``stream_format`` after chunk ``after``, then
    live; 204 if it ended with nothing after it. ``DELETE`` stops it instead (see
    :func:`stop_response`). Raises NOT_FOUND for a stream that is not there, another
    tenant's, or of another format."""
    header, total = await stream_log.wire_state(log_id)
    if header is None or header.tenant_id != tenant.pk or header.format != stream_format:
        raise not_found()
    if method == "DELETE":
        if total is not None:
            return JsonResponse({"messageId": str(uuid.UUID(log_id)), "status": "ended"})
        return await stop_response(tenant, log_id)
    if total is not None and after >= total - 1:
        return HttpResponse(status=204)
    return event_stream(
        Producer(_resumed(log_id, after, lost)),
        headers={"x-stream-id": log_id, **(headers or {})},
    )


async def _resumed(log_id: str, after: int, lost: LostEncoder) -> AsyncGenerator[bytes, None]:
    try:
        async for item in stream_log.follow_wire(log_id, after):
            if isinstance(item, WireChunk):
                yield b"id: %d\n%b" % (item.seq, item.data.encode())
    except TimeoutError:
        for chunk in lost(
            ApiError(
                ErrorCode.STREAM_ERROR,
                "The stream broke off: the server running it sent nothing more.",
                retryable=True,
            )
        ):
            yield chunk
    except LogTrimmed:
        for chunk in lost(
            ApiError(ErrorCode.STREAM_ERROR, "The chunks after this id are no longer kept.")
        ):
            yield chunk


async def stop_response(tenant: Tenant, log_id: str) -> HttpResponse:
    """Ask the tenant's stream ``log_id`` to end and answer once it has (stored, settled):
    200 with its final status, or 202 ``stopping`` if that takes longer than a stream's
    end may (a database outage)."""
    await stream_log.request_stop(log_id)
    wait = settings.STREAM_END_WAIT_SECONDS + stream_log.STOP_CHECK_SECONDS + 2
    status = await stream_log.wait_end(log_id, wait)
    message_id = str(uuid.UUID(log_id))
    if status is None:
        return JsonResponse({"messageId": message_id, "status": "stopping"}, status=202)
    return JsonResponse({"messageId": message_id, "status": status})


# --- The OpenAPI description ---------------------------------------------------------------

LAST_EVENT_ID = {
    "in": "header",
    "name": "Last-Event-ID",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID},
    "description": "The id of the last event you had; none: from the first event.",
}
STOPPED = oa.obj(
    {
        "messageId": oa.string(format="uuid"),
        "status": oa.string(
            enum=["cancelled", "complete", "failed", "stopping", "ended"],
            description="How the answer ended (`stopping`: not yet, with 202).",
        ),
    },
    ("messageId", "status"),
)
NO_STREAM = {"description": "Nothing to send: it ended.", "headers": oa.RATE_HEADERS}


def openapi_paths(
    operation_id: str,
    tag: str,
    path: str,
    error_schema: str,
    bad_input: int,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, oa.Schema]:
    """A format's resume URL (``x-stream-url``): GET it again, DELETE to stop it."""
    errors = {bad_input: None, 401: None, 404: "No such stream (or not yours, or expired)."}
    stream_id = oa.path_parameter("stream_id", "The stream's `x-stream-id`.")
    return {
        path: {
            "get": oa.operation(
                f"{operation_id}_resume",
                tag,
                "Resume a stream from any process: the events after Last-Event-ID, then live",
                {
                    "200": oa.stream(
                        "Its events after that id, in its format, each with its `id:`."
                    ),
                    "204": NO_STREAM,
                    **oa.errors(error_schema, errors),
                },
                parameters=[stream_id, LAST_EVENT_ID],
                security=security,
            ),
            "delete": oa.operation(
                f"{operation_id}_stop",
                tag,
                "Stop the stream: stored cancelled, settled for what it had",
                {"200": oa.json_response("StreamStopped"), **oa.errors(error_schema, errors)},
                parameters=[stream_id],
                security=security,
            ),
        }
    }
