"""Django's ASGI handler, with no thread hand-off for a request to an async view.

Django runs every request in a thread-sensitive context of its own and sends
``request_started`` and ``request_finished`` through ``sync_to_async``, so each request
starts a thread and hops to it two or three times, even when the view is async and its
database work goes to the database executor (:mod:`chatproject.db`). Django's own
receivers of those signals (query log reset, closing stale connections and caches) act on
the calling thread's connections, and the event loop's thread has none: for an async view
the signals are sent right there, and only when something else receives them. Every other
view (DRF's, the admin's) goes through Django's own path.
"""

import asyncio
import contextlib
import functools
import weakref

from asgiref.sync import iscoroutinefunction
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.core.handlers.asgi import get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
from django.urls import Resolver404, ResolverMatch, get_resolver, set_script_prefix


class ASGIHandler(DjangoASGIHandler):
    def resolve_request(self, request):
        """Django's, from a copy per path: it walks the URL patterns for every request."""
        if hasattr(request, "urlconf"):  # a middleware's own URLconf
            return super().resolve_request(request)
        request.resolver_match = _resolved(request.path_info)
        return request.resolver_match

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self._async_view(scope):
            await self.handle_inline(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def _async_view(self, scope) -> bool:
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return _is_async_view(path)

    async def handle_inline(self, scope, receive, send):
        """Django's ``handle``, its signals sent and the response closed on the loop."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        if has_other_receivers(signals.request_started):
            signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def respond():
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client left mid-send
                await self.send_response(response, send)
            return response

        # As Django does: a disconnect while the view runs cancels it.
        listening = asyncio.create_task(self.listen_for_disconnect(receive))
        responding = asyncio.create_task(respond())
        tasks = (listening, responding)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not responding.done():  # the client left first
            responding.cancel()
            await asyncio.wait({responding})
        # The listener ends on the loop's next turn, cancelled: nothing waits for that.
        if not listening.cancel() and not listening.cancelled():
            listening.exception()  # the disconnect (RequestAborted) that ended the wait
        # The tasks' ends are read, not awaited: an exception raised here would hold this
        # frame (the request, the response) in a reference cycle, for the garbage collector.
        error = None if responding.cancelled() else responding.exception()
        body_file.close()
        if responding.cancelled() or isinstance(error, RequestAborted):
            _request_finished(self.__class__)
        elif error is not None:
            raise error
        else:
            _close(responding.result())
            _request_finished(self.__class__)


# Django's receivers of request_started and request_finished, with nothing to do on the
# event loop's thread (it has no database connection, and no cache of its own).
_IDLE_ON_THE_LOOP = frozenset({reset_queries, close_old_connections, close_caches, reset_urlconf})


def has_other_receivers(signal) -> bool:
    """Whether anything but Django's own receivers is connected to ``signal``."""
    for receiver in signal.receivers:
        target = receiver[1]
        if isinstance(target, weakref.ReferenceType):
            target = target()
        if target is not None and target not in _IDLE_ON_THE_LOOP:
            return True
    return False


def _close(response) -> None:
    """``response.close()`` but for its request_finished signal (sent by the caller)."""
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):
            closer()
    response._resource_closers.clear()
    response.closed = True


def _request_finished(sender) -> None:
    reset_urlconf(sender)
    if has_other_receivers(signals.request_finished):
        signals.request_finished.send(sender=sender)


@functools.lru_cache(maxsize=4096)  # the URLs are fixed once the process serves
def _resolved(path: str) -> ResolverMatch:
    """The match of ``path`` (Resolver404 is raised, not kept)."""
    return get_resolver().resolve(path)


def _is_async_view(path: str) -> bool:
    try:
        match = _resolved(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
