from django.urls import re_path

from chats.consumers import ChatConsumer

# Channels routes ASGI applications with Django's URL patterns, which Django's stubs type
# for views only.
websocket_urlpatterns = [
    re_path(r"^ws/chat/?$", ChatConsumer.as_asgi()),  # type: ignore[arg-type]
]
