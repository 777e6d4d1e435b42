"""Prometheus metrics, served per process at ``/metrics`` (scrape every process)."""

import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from chatproject.errors import ErrorCode, error_body

GENERATIONS = Counter(
    "chat_generations_total", "Answers that reached an ending, by ending.", ["status", "cache"]
)
REFUSALS = Counter("chat_refusals_total", "Requests refused before any token.", ["code"])
TOKENS = Counter("chat_streamed_tokens_total", "Tokens streamed to clients.")
CREDITS = Counter("chat_credits_charged_total", "Credits charged for answers.")
FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From a request's admission starting to its first token.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBSOCKETS = Gauge("chat_websocket_connections", "Open /ws/chat connections.")
HTTP_RESPONSES = Counter("http_responses_total", "HTTP responses, by status.", ["status"])


async def metrics_view(request):
    """The text exposition format; behind ``Authorization: Bearer <METRICS_TOKEN>`` when
    that is set."""
    token = settings.METRICS_TOKEN
    if token:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.encode()):
            body = error_body(ErrorCode.UNAUTHORIZED, "A valid metrics token is required.")
            return JsonResponse(body, status=401)
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
