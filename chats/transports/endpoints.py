"""The request side of the transports' API views: the ``endpoint`` decorator (method
check, errors in the transport's own format, rate-limit headers), authentication by API
key, and the GenerationRequest built from an HTTP request."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from billing.authentication import presented_key
from billing.key_cache import api_key_resolve_async
from billing.limits import request_admit
from billing.models import Tenant
from chatproject.errors import ApiError, ErrorCode, error_response, outage_error
from chatproject.request_id import request_id_of
from chats.engine import GenerationRequest
from chats.transports import requests

logger = logging.getLogger(__name__)

_RATE_LIMIT = "_plan_rate_limit"  # the request attribute endpoint() takes headers from


async def authenticate(request: HttpRequest, *, rate_limit: bool = False) -> Tenant:
    """The tenant of the request's key (``X-API-Key`` or Bearer); raises UNAUTHORIZED.

    With ``rate_limit``, the request also takes one from the tenant's plan allowance:
    for views that do not run the engine (``start_generation`` counts its own requests).
    A spent allowance raises RATE_LIMITED (429, ``Retry-After``, ``X-RateLimit-*``);
    otherwise :func:`endpoint` puts the ``X-RateLimit-*`` headers on the answer.
    """
    api_key = await api_key_resolve_async(presented_key(request.headers))
    if rate_limit:
        state, _ = await request_admit(api_key.tenant)
        if state is not None:
            setattr(request, _RATE_LIMIT, state)
    return api_key.tenant


def generation_request(
    request: HttpRequest, tenant: Tenant, messages: list[dict[str, Any]], **options: Any
) -> GenerationRequest:
    """The shared GenerationRequest builder (:mod:`chats.transports.requests`) given the
    request's id and its ``Cache-Control`` and ``Idempotency-Key`` headers."""
    return requests.generation_request(
        tenant,
        messages,
        request_id=getattr(request, "request_id", None),
        cache_control=request.headers.get("Cache-Control", ""),
        idempotency_key=request.headers.get("Idempotency-Key", ""),
        **options,
    )


ErrorEncoder = Callable[[ApiError], HttpResponse]
View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


def endpoint(
    *, methods: Iterable[str] = ("POST",), on_error: ErrorEncoder = error_response
) -> Callable[[View], View]:
    """An async, CSRF-exempt API view whose ApiErrors (and bugs) are answered by
    ``on_error`` in the transport's own format."""
    allowed = tuple(methods)

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase
            try:
                if request.method not in allowed:
                    raise ApiError(
                        ErrorCode.METHOD_NOT_ALLOWED,
                        f"Method {request.method} is not allowed here.",
                        headers={"Allow": ", ".join(allowed)},
                    )
                response = await view(request, *args, **kwargs)
            except ApiError as error:
                response = on_error(error)
            except Exception as exc:
                failure = outage_error(exc)
                if failure is None:
                    logger.exception("unexpected error before streaming")
                    failure = ApiError(
                        ErrorCode.STREAM_ERROR,
                        f"Internal error (request id {request_id_of(request)}).",
                    )
                else:
                    logger.warning("database unavailable: %s", exc)
                response = on_error(failure)
            state = getattr(request, _RATE_LIMIT, None)
            if state is not None:
                for name, value in state.headers().items():
                    response.setdefault(name, value)
            return response

        return csrf_exempt(wrapper)

    return decorator
