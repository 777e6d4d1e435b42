from django.urls import path

from chats.transports import aisdk, docgen, openai_api, regpilot

# Each wire format's module: its views below, its OpenAPI fragment from ``openapi()``.
WIRE_FORMATS = (regpilot, docgen, aisdk, openai_api)

urlpatterns = [
    # routed chat (RegPilot's format)
    path("api/ai/chat", regpilot.chat_stream, name="regpilot-chat"),
    path("api/ai/chat/complete", regpilot.chat_complete, name="regpilot-chat-complete"),
    path("api/ai/chat/streams/<str:stream>", regpilot.resume, name="regpilot-resume"),
    # document chat
    path("api/v1/chat/stream", docgen.chat_stream, name="docgen-stream"),
    path("api/v1/chat/generate", docgen.generate, name="docgen-generate"),
    path("api/v1/chat/message", docgen.message, name="docgen-message"),
    path("api/v1/chat/streams/<str:stream>", docgen.resume, name="docgen-resume"),
    # the Vercel AI SDK
    path("api/chat", aisdk.chat, name="aisdk-chat"),
    path("api/chat/<str:chat_id>/stream", aisdk.resume, name="aisdk-resume"),
    path("api/chat/<str:chat_id>/stop", aisdk.stop, name="aisdk-stop"),
    # OpenAI-compatible
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("v1/chat/streams/<str:stream>", openai_api.resume, name="openai-resume"),
    path("v1/models", openai_api.models, name="openai-models"),
    path("v1/models/<path:model_id>", openai_api.model_detail, name="openai-model"),
]
