"""ASGI entry point: HTTP to Django, WebSocket to the chat consumer."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

# Django must be set up before anything imports models (the routing below does).
django.setup(set_prefix=False)

from chatproject.handler import ASGIHandler  # noqa: E402

django_http = ASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from chatproject.backpressure import with_backpressure  # noqa: E402
from chatproject.origin import browser_origin_validator  # noqa: E402
from chats.routing import websocket_urlpatterns  # noqa: E402

http_app = ASGIStaticFilesHandler(django_http) if settings.SERVE_STATIC else django_http

application = with_backpressure(
    ProtocolTypeRouter(
        {
            "http": http_app,
            # Django's URL patterns, as Channels takes them (see chats.routing).
            "websocket": browser_origin_validator(
                URLRouter(websocket_urlpatterns)  # type: ignore[arg-type]
            ),
        }
    )
)

from chatproject.garbage_collection import tune_for_serving  # noqa: E402

tune_for_serving()  # last: what the application is made of is built by now
