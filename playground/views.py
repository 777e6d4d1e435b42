"""The web playground: one page that talks to the service's own endpoints from the browser
with a tenant key the user pastes (kept in the tab's session storage). The page itself is
public, so it names no catalog model: the script lists them from ``/v1/models`` with the
key."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chats import catalog

# The wire formats the page speaks: (value, label, what it shows of that format).
FORMATS = [
    ("ws", "WebSocket · /ws/chat", "chat events over one socket"),
    ("regpilot", "SSE · /api/ai/chat", "governor headers, usage event"),
    ("docgen", "SSE · /api/v1/chat/stream", "project documents, done metadata"),
    ("aisdk", "AI SDK · /api/chat", "the ai package's DefaultChatTransport"),
    ("openai", "OpenAI · /v1/chat/completions", "chat.completion.chunk deltas"),
]


@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    return render(
        request, "playground/index.html", {"formats": FORMATS, "tiers": catalog.QUALITY_TIERS}
    )
