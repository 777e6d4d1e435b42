"""The shape of this project's middleware: sync and async capable, so async views stay
fully asynchronous, with a hook before the view and one on the response."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse


class Middleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        """An answer that ends the request here, or None to go on."""
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request):
        if iscoroutinefunction(self):
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
