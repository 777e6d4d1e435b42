"""One error type and one error shape for the whole product.

Services raise :class:`ApiError` with a code from :class:`ErrorCode`; transports turn it
into their own format (the JSON envelope here, SSE or WebSocket ``error`` events
elsewhere) using the same code, message and ``retryable`` flag.
"""

from enum import StrEnum
from typing import Any

from django import db
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response


class ErrorCode(StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CHAT_NOT_FOUND = "CHAT_NOT_FOUND"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    GOVERNOR_REJECTED = "GOVERNOR_REJECTED"
    RATE_LIMITED = "RATE_LIMITED"
    CONNECTION_LIMIT = "CONNECTION_LIMIT"
    CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    LLM_CONNECTION_ERROR = "LLM_CONNECTION_ERROR"
    LLM_TIMEOUT = "LLM_TIMEOUT"
    LLM_PROVIDER_ERROR = "LLM_PROVIDER_ERROR"
    RAG_RETRIEVAL_ERROR = "RAG_RETRIEVAL_ERROR"
    STREAM_ERROR = "STREAM_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


# code -> (HTTP status, retryable)
_ERROR_TABLE: dict[ErrorCode, tuple[int, bool]] = {
    ErrorCode.UNAUTHORIZED: (401, False),
    ErrorCode.VALIDATION_ERROR: (400, False),
    ErrorCode.NOT_FOUND: (404, False),
    ErrorCode.METHOD_NOT_ALLOWED: (405, False),
    ErrorCode.CHAT_NOT_FOUND: (404, False),
    ErrorCode.MODEL_NOT_FOUND: (400, False),
    ErrorCode.INSUFFICIENT_CREDITS: (402, False),
    ErrorCode.GOVERNOR_REJECTED: (403, False),
    ErrorCode.RATE_LIMITED: (429, True),
    ErrorCode.CONNECTION_LIMIT: (429, True),
    ErrorCode.CONCURRENCY_LIMIT: (429, True),
    ErrorCode.IDEMPOTENCY_CONFLICT: (409, True),
    ErrorCode.LLM_CONNECTION_ERROR: (502, True),
    ErrorCode.LLM_TIMEOUT: (504, True),
    ErrorCode.LLM_PROVIDER_ERROR: (502, False),
    ErrorCode.RAG_RETRIEVAL_ERROR: (502, True),
    ErrorCode.STREAM_ERROR: (500, False),
    ErrorCode.SERVICE_UNAVAILABLE: (503, True),
}

# What a client is told to wait before retrying while the database is down.
OUTAGE_RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An error a client is meant to see: a stable code, a message, optional details."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details
        status, default_retryable = _ERROR_TABLE[self.code]
        self.status = status
        self.retryable = default_retryable if retryable is None else retryable
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)

    def event(self) -> dict[str, Any]:
        """The fields an SSE or WebSocket ``error`` event carries."""
        data: dict[str, Any] = {
            "code": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.details:
            data["details"] = self.details
        return data


class PayloadTooLarge(ApiError):
    """A body over a size limit: answered with HTTP 413."""

    def __init__(self, message: str, *, limit: int, field: str = "body") -> None:
        super().__init__(
            ErrorCode.VALIDATION_ERROR, message, details={field: [f"At most {limit} bytes."]}
        )
        self.status = 413


def payload_too_large() -> PayloadTooLarge:
    """A body over ``MAX_REQUEST_BYTES`` (Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.", limit=limit)


def oversized_websocket_message(limit: int) -> ApiError:
    """The ``error`` event's error for a WebSocket message over the server's size limit."""
    return ApiError(
        ErrorCode.VALIDATION_ERROR,
        f"The message is larger than {limit} bytes.",
        details={"message": [f"At most {limit} bytes."]},
    )


def service_unavailable(message: str = "") -> ApiError:
    """The answer while a service the request needs (the database) is down: 503, retryable,
    with ``Retry-After``."""
    return ApiError(
        ErrorCode.SERVICE_UNAVAILABLE,
        message or "The service is temporarily unavailable; retry shortly.",
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
    )


try:
    import psycopg
except ImportError:  # SQLite only
    psycopg = None  # type: ignore[assignment]  # absent, not a module

# PostgreSQL's answers that mean "not now" rather than "not this": the server is shutting
# down, starting up, or out of connections (class 08, connection exceptions, aside).
_OUTAGE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached or dropped the connection
    (down, restarting, failing over, out of connections, the pool waited in vain), as
    opposed to a bug or bad data."""
    cause = exc.__cause__ if isinstance(exc, db.DatabaseError) and exc.__cause__ else exc
    if psycopg is not None and isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
        state = cause.sqlstate  # None: no answer from the server at all
        return state is None or state.startswith("08") or state in _OUTAGE_SQLSTATES
    return isinstance(exc, db.InterfaceError)  # Django's own "connection already closed"


def outage_error(exc: BaseException) -> ApiError | None:
    """SERVICE_UNAVAILABLE for an outage (:func:`is_outage`); None for anything else."""
    return service_unavailable() if is_outage(exc) else None


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_schema() -> dict[str, Any]:
    """The envelope of :func:`error_body`, for the OpenAPI description."""
    error = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
            "message": {"type": "string"},
            "details": {"type": "object", "additionalProperties": True},
        },
        "required": ["code", "message"],
    }
    return {
        "type": "object",
        "properties": {"error": error},
        "required": ["error"],
        "description": "The product's error envelope.",
    }


def error_response(error: ApiError, *, status: int | None = None) -> JsonResponse:
    """The JSON envelope as a plain Django response (for non-DRF views)."""
    response = JsonResponse(error.body(), status=status or error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _from_drf(exc: drf_exceptions.APIException) -> ApiError:
    if isinstance(exc, drf_exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return ApiError(ErrorCode.VALIDATION_ERROR, "Invalid request.", details=detail)
    if isinstance(exc, drf_exceptions.ParseError):
        return ApiError(
            ErrorCode.VALIDATION_ERROR,
            "The request body is not valid JSON.",
            details={"body": [str(exc.detail)]},
        )
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return ApiError(
            ErrorCode.VALIDATION_ERROR,
            "The request body must be JSON (Content-Type: application/json).",
            details={"content_type": [str(exc.detail)]},
        )
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        return ApiError(ErrorCode.UNAUTHORIZED, str(exc.detail))
    if isinstance(exc, drf_exceptions.NotFound):
        return ApiError(ErrorCode.NOT_FOUND, "Not found.")
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return ApiError(ErrorCode.METHOD_NOT_ALLOWED, str(exc.detail))
    if isinstance(exc, drf_exceptions.Throttled):
        return ApiError(ErrorCode.RATE_LIMITED, "Rate limit exceeded.")
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return ApiError(ErrorCode.UNAUTHORIZED, str(exc.detail))
    if 400 <= exc.status_code < 500:  # e.g. 406 Not Acceptable: the client's to fix
        error = ApiError(ErrorCode.VALIDATION_ERROR, str(exc.detail))
        error.status = exc.status_code
        return error
    return ApiError(ErrorCode.STREAM_ERROR, str(exc.detail))


def drf_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's hook: every error a DRF view raises leaves in the product's envelope."""
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, RequestDataTooBig):  # DRF reads request.body before its parser
        exc = payload_too_large()
    if isinstance(exc, drf_exceptions.APIException):
        error = _from_drf(exc)
        status = error.status
    elif isinstance(exc, ApiError):
        error, status = exc, exc.status
    elif is_outage(exc):
        error = service_unavailable()
        status = error.status
    else:
        return None  # unexpected: Django's handler500 answers with the envelope
    headers = dict(error.headers)
    if isinstance(exc, drf_exceptions.APIException):
        # Set by DRF on authentication failures and throttles only.
        auth_header = getattr(exc, "auth_header", None)
        wait = getattr(exc, "wait", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        if wait:
            headers["Retry-After"] = str(int(wait))
    return Response(error.body(), status=status, headers=headers)
