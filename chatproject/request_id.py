"""A request id for every HTTP request: echoed from ``X-Request-ID`` or made up,
returned as ``x-request-id`` and stamped on every log line written while serving it."""

import logging
import re
import uuid
from contextvars import ContextVar

from django.http import HttpRequest

from chatproject.metrics import HTTP_RESPONSES
from chatproject.middleware import Middleware

current_request_id: ContextVar[str] = ContextVar("request_id", default="-")

# A client's id is echoed only when it is short and harmless in a header or a log line.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id(client_value: str | None = None) -> str:
    if client_value and _CLIENT_ID.match(client_value):
        return client_value
    return uuid.uuid4().hex


def request_id_of(request: HttpRequest) -> str:
    """The id :class:`RequestIdMiddleware` gave the request."""
    return getattr(request, "request_id", "-")


class RequestIdMiddleware(Middleware):
    def before(self, request) -> None:
        request.request_id = new_request_id(request.headers.get("X-Request-ID"))
        current_request_id.set(request.request_id)

    def after(self, request, response):
        response["x-request-id"] = request.request_id
        HTTP_RESPONSES.labels(status=str(response.status_code)).inc()
        return response


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True
