from django.urls import re_path

from chats.api.views import ChatViewSet

# Clients write these paths without a trailing slash and the create path with one
# (docs/wire-formats.md: chat management); both spellings are accepted.
chat_create = ChatViewSet.as_view({"post": "create"})
chat_detail = ChatViewSet.as_view({"get": "retrieve", "delete": "destroy"})
chat_messages = ChatViewSet.as_view({"get": "messages"})
user_chats = ChatViewSet.as_view({"get": "user"})

urlpatterns = [
    re_path(r"^api/v1/chats/?$", chat_create, name="chat-create"),
    re_path(r"^api/v1/chats/user/(?P<user_id>[^/]+)/?$", user_chats, name="chat-user"),
    re_path(r"^api/v1/chats/(?P<chat_id>[^/]+)/messages/?$", chat_messages, name="chat-messages"),
    re_path(r"^api/v1/chats/(?P<chat_id>[^/]+)/?$", chat_detail, name="chat-detail"),
]
