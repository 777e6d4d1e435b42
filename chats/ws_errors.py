"""What a ``/ws/chat`` socket is told when something fails: the close codes of the
consumer's own refusals, and the error for a failure (an outage, or a bug)."""

import logging

import redis

from chatproject.errors import ApiError, ErrorCode, outage_error, service_unavailable
from chats import ws_events
from chats.ws_session import Refused

logger = logging.getLogger(__name__)

CLOSE_CONNECTION_LIMIT = 4029
# 1011 would be the protocol's own code, but daphne's WebSocket library sends only 1000 and
# 3000-4999 from an application (it raises on anything else and drops the close frame).
CLOSE_INTERNAL_ERROR = 4500
CLOSE_SERVICE_UNAVAILABLE = 4503  # the database or Redis is down: retry shortly


def unavailable(exc: BaseException) -> ApiError | None:
    """SERVICE_UNAVAILABLE when ``exc`` is the database or Redis being down."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return service_unavailable("The message service is unavailable; reconnect shortly.")
    return outage_error(exc)


def unexpected(request_id: str) -> ApiError:
    return ApiError(ErrorCode.STREAM_ERROR, f"Unexpected error (request id {request_id}).")


def connect_refusal(exc: Exception) -> Refused:
    """How a connection that failed to open is refused (the failure logged)."""
    if isinstance(exc, TimeoutError):  # the database is not answering (or is swamped)
        logger.warning("could not open a chat connection in time")
        error = service_unavailable("Could not open the connection in time; retry shortly.")
        return Refused(error, CLOSE_SERVICE_UNAVAILABLE)
    outage = unavailable(exc)
    if outage is not None:
        logger.warning("could not open a chat connection: %r", exc)
        return Refused(outage, CLOSE_SERVICE_UNAVAILABLE)
    logger.exception("could not open a chat connection")
    error = ApiError(ErrorCode.STREAM_ERROR, "Could not open the connection; retry.")
    return Refused(error, CLOSE_INTERNAL_ERROR)


def generation_failure(exc: Exception, request_id: str) -> ws_events.Error:
    """The event for a generation that ended with ``exc`` (the failure logged): an outage
    names the request, a bug says only its id."""
    outage = unavailable(exc)
    if outage is None:
        logger.exception("generation failed")
        return ws_events.error_event(unexpected(request_id))
    logger.warning("generation failed: %r", exc)
    return ws_events.error_event(outage, request_id=request_id)
