"""CORS for the browser clients of the transports (``CORS_ALLOWED_ORIGINS``)."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from chats.transports.endpoints import View


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
        "x-chat-id, x-stream-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining, "
        "x-ratelimit-reset",
        "Access-Control-Max-Age": "86400",
    }
    if allow_origin != "*":
        headers["Vary"] = "Origin"
    return headers


def cors(view: View) -> View:
    """CORS headers on every answer of ``view`` (errors included); ``OPTIONS`` → 200."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response: HttpResponseBase
        if request.method == "OPTIONS":
            response = HttpResponse(status=200)
        else:
            response = await view(request, *args, **kwargs)
        for name, value in cors_headers(request).items():
            response[name] = value
        return response

    return csrf_exempt(wrapper)
