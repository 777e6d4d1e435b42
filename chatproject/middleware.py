"""This project's middleware: sync and async capable, so async views stay fully
asynchronous, with no thread hand-off on the way.

``Middleware`` is the shape of ours, with a hook before the view and one on the response.
Django's own middleware that only read settings and headers run on the event loop
(``InlineHooks``).
"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, security


class Middleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)  # known once, not asked per call
        if self._async:
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        """An answer that ends the request here, or None to go on."""
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request):
        if self._async:
            return self.__acall__(request)
        answer = self.before(request)
        if answer is not None:
            return answer
        return self.after(request, self.get_response(request))

    async def __acall__(self, request):
        answer = self.before(request)
        if answer is not None:
            return answer
        return self.after(request, await self.get_response(request))


class InlineHooks:
    """A Django middleware whose hooks only read settings and headers, run on the event
    loop in async mode.

    Django's ``MiddlewareMixin`` hands each hook to ``sync_to_async`` in async mode: a
    thread hand-off per hook, and a new thread per request (every request has its own
    thread-sensitive context). Hooks that do no I/O need neither.
    """

    def __init__(self, get_response):
        super().__init__(get_response)
        # Looked up once, not for every request.
        self._before = getattr(self, "process_request", None)
        self._after = getattr(self, "process_response", None)

    async def __acall__(self, request):
        response = self._before(request) if self._before is not None else None
        response = response or await self.get_response(request)
        if self._after is not None:
            response = self._after(request, response)
        return response


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    """HTTPS redirect, HSTS, nosniff, referrer and opener policies, on every answer."""


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    """Slash redirects, disallowed user agents, Content-Length, on every answer."""


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    """``X-Frame-Options`` on every answer."""
