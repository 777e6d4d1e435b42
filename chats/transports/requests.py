"""What every transport, HTTP or WebSocket, does between its parser and the engine: one
GenerationRequest builder, so that cache opt-out, idempotency keys, request ids and
defaults mean the same on every wire format."""

from __future__ import annotations

import uuid
from typing import Any

from billing.models import Tenant
from chats.catalog import QUALITY_TIERS
from chats.engine import GenerationRequest

MAX_IDEMPOTENCY_KEY_LENGTH = 255  # the stored claim's key


def wants_cache(cache_control: str) -> bool:
    """False for ``no-cache`` (or ``no-store``), as in a Cache-Control header."""
    directives = cache_control.lower()
    return "no-cache" not in directives and "no-store" not in directives


def model_choice(name: str | None) -> tuple[str | None, str | None]:
    """``(quality, model)`` for a client's model name: a tier name routes like ``quality``."""
    if name in QUALITY_TIERS:
        return name, None
    return None, name


def generation_request(
    tenant: Tenant,
    messages: list[dict[str, Any]],
    *,
    request_id: str | None = None,
    cache_control: str = "",
    idempotency_key: str = "",
    **options: Any,
) -> GenerationRequest:
    """A GenerationRequest: ``cache_control`` and ``idempotency_key`` as the client sent
    them (the HTTP headers, or the WebSocket message's fields). Options given as None
    (what the client left out) take the engine's defaults, which are defined once, on
    GenerationRequest."""
    return GenerationRequest(
        tenant=tenant,
        messages=messages,
        request_id=request_id or uuid.uuid4().hex,
        use_cache=wants_cache(cache_control),
        idempotency_key=idempotency_key[:MAX_IDEMPOTENCY_KEY_LENGTH],
        **{name: value for name, value in options.items() if value is not None},
    )
