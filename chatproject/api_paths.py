"""API paths answer in their own JSON error format, in every mode.

Django answers some requests without a view of ours: an unknown URL, an exception no view
handled. With ``DEBUG`` off it calls the handlers below; with it on it makes HTML debug
pages, which the middleware replaces. Either way a path under an API prefix
(``API_ERROR_FORMATS``: OpenAI's shape under ``/v1/``, the document chat's statuses under
``/api/v1/chat/``, the envelope under ``/api/``) is answered in that prefix's format, and
any other path in the product's envelope.

It also refuses, before routing, a path or query string holding a NUL character: path and
query parameters reach database queries as text, and no database column takes NUL.

API paths (and the probes) skip the middleware of pages for browsers: sessions, CSRF,
users and messages (``BrowserMiddleware``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from chatproject.errors import (
    ApiError,
    ErrorCode,
    error_response,
    outage_error,
    payload_too_large,
)
from chatproject.middleware import Middleware

ErrorEncoder = Callable[[ApiError], HttpResponse]

# What an error answer Django made on its own means, by status.
_ERRORS = {
    400: (ErrorCode.VALIDATION_ERROR, "Bad request."),
    403: (ErrorCode.UNAUTHORIZED, "Forbidden."),
    404: (ErrorCode.NOT_FOUND, "Not found."),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed."),
}


@functools.cache
def _formats() -> tuple[tuple[str, ErrorEncoder], ...]:
    """``(prefix, encoder)``, longest prefix first."""
    formats = sorted(settings.API_ERROR_FORMATS.items(), key=lambda item: -len(item[0]))
    return tuple((prefix, import_string(path)) for prefix, path in formats)


def error_encoder(path: str) -> ErrorEncoder | None:
    """The error format of the API ``path`` belongs to; None outside the API."""
    for prefix, encoder in _formats():
        if path.startswith(prefix):
            return encoder
    return None


def _nul_in_url(request: HttpRequest) -> bool:
    query = request.META.get("QUERY_STRING", "")
    return "\x00" in request.path or "%00" in query or "\x00" in query


def _made_by_django(response: HttpResponse) -> bool:
    """An error answer that is not one of ours: ours are all JSON."""
    return (
        response.status_code >= 400
        and not response.streaming
        and not response.get("Content-Type", "").startswith("application/json")
    )


def _answer(request: HttpRequest, error: ApiError) -> HttpResponse:
    return (error_encoder(request.path) or error_response)(error)


def handler400(request, exception=None):
    """Django's own refusals (e.g. a body over DATA_UPLOAD_MAX_MEMORY_SIZE, read where no
    view of ours catches it)."""
    if isinstance(exception, RequestDataTooBig):
        return _answer(request, payload_too_large())
    return _answer(request, _as_api_error(request, 400))


def handler403(request, exception=None):
    return _answer(request, _as_api_error(request, 403))


def handler404(request, exception=None):
    return _answer(request, _as_api_error(request, 404))


def handler500(request):
    # Django calls this while it handles the exception, so that is still the current one:
    # a database outage is answered 503, retryable, like in the views.
    outage = outage_error(sys.exc_info()[1] or Exception())
    return _answer(request, outage or _as_api_error(request, 500))


def _as_api_error(request: HttpRequest, status: int) -> ApiError:
    """What an error answer of ``status`` Django made on its own says, as an ApiError
    that keeps that status."""
    if status in _ERRORS:
        error = ApiError(*_ERRORS[status])
    else:
        request_id = getattr(request, "request_id", "-")
        error = ApiError(ErrorCode.STREAM_ERROR, f"Internal error (request id {request_id}).")
    error.status = status
    return error


class ApiPathMiddleware(Middleware):
    def before(self, request: HttpRequest) -> HttpResponse | None:
        if not _nul_in_url(request):
            return None
        encoder = error_encoder(request.path)
        if encoder is None:
            return None
        return encoder(
            ApiError(
                ErrorCode.VALIDATION_ERROR,
                "The URL must not contain NUL characters.",
                details={"url": ["Must not contain NUL characters."]},
            )
        )

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if not _made_by_django(response):
            return response
        encoder = error_encoder(request.path)
        if encoder is None:
            return response
        replaced = encoder(_as_api_error(request, response.status_code))
        if "Allow" in response:
            replaced["Allow"] = response["Allow"]
        return replaced


def is_api_path(path: str) -> bool:
    """Paths answered to API keys, never to a browser's session: the API prefixes and
    the probes."""
    return error_encoder(path) is not None or path in _PROBES


_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class BrowserMiddleware(Middleware):
    """``settings.BROWSER_MIDDLEWARE`` (sessions, CSRF, users, messages) around every
    path but the API's.

    API requests carry a key, not a cookie: they skip those middleware and the thread
    hand-offs they make in async mode. Every other page (the admin, the playground, any
    page added later) keeps them. Their ``process_view`` hooks (CSRF's check) are called
    here, since Django collects those only from ``MIDDLEWARE``.
    """

    def __init__(self, get_response):
        super().__init__(get_response)
        chain = get_response
        hooks = []
        for path in reversed(settings.BROWSER_MIDDLEWARE):
            chain = import_string(path)(chain)
            for unsupported in ("process_exception", "process_template_response"):
                if hasattr(chain, unsupported):
                    raise ImproperlyConfigured(f"{path}: {unsupported} is not run here.")
            if hasattr(chain, "process_view"):
                hooks.insert(0, chain.process_view)
        self.browser = chain
        self.view_hooks = hooks
        # An async hook in async mode, so Django calls it without a thread hand-off.
        self.process_view = (
            self._aprocess_view if iscoroutinefunction(self) else self._sprocess_view
        )

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        return (self.get_response if is_api_path(request.path) else self.browser)(request)

    async def __acall__(self, request):
        if is_api_path(request.path):
            return await self.get_response(request)
        return await self.browser(request)

    def _sprocess_view(self, request, view, args, kwargs):
        if is_api_path(request.path):
            return None
        for hook in self.view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None

    async def _aprocess_view(self, request, view, args, kwargs):
        # CSRF's check reads the cookie, the header and the form: no I/O.
        return self._sprocess_view(request, view, args, kwargs)
