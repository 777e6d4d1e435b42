"""One error type and one error shape for the whole product.

Services raise :class:`ApiError` with a code from :class:`ErrorCode`; transports turn it
into their own format (the JSON envelope here, SSE or WebSocket ``error`` events
elsewhere) using the same code, message and ``retryable`` flag.
"""

from enum import StrEnum
from typing import Any

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
}


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


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if details:
        error["details"] = details
    return {"error": error}


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
    else:
        return None  # unexpected: Django's handler500 answers with the envelope
    headers = dict(error.headers)
    if isinstance(exc, drf_exceptions.APIException):
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
    return Response(error.body(), status=status, headers=headers)
