"""The response cache: identical requests of one tenant answered from a stored reply.

A request's key is a SHA-256 over a canonical JSON of everything that shapes the answer
(tenant, resolved model, messages and every generation parameter), under a prefix naming
the tenant, so no two tenants can ever share an entry. Entries live for
``RESPONSE_CACHE_TTL_SECONDS`` (0 turns the cache off) in the billing store (Redis when
``REDIS_URL`` is set, this process's memory otherwise). A cache that fails is a miss,
never an error.

The same storage keeps idempotent replies: an answer stored under a client's
``Idempotency-Key``, scoped to its tenant.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings

from billing import limits
from billing.limits import RateLimitState
from billing.models import Tenant
from billing.store import ClaimOnMiss, StoreUnavailable, get_store

logger = logging.getLogger(__name__)

KEY_PREFIX = "billing"
# Bump when the stored format changes: old entries (and idempotent replies) are then ignored.
KEY_VERSION = "v1"
# Bump when the response cache key's recipe changes: old entries are then never looked up.
RECIPE_VERSION = "2"
REQUIRED_PARTS = ("tenant_id", "model", "messages")


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _canonical(value: Any) -> Any:
    """Equal requests → equal JSON: 1 and 1.0 (and Decimal("1")) are one temperature."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if type(value) is dict and _plain(value):  # a message, most often: as it is
        return value
    if isinstance(value, (int, float, Decimal)):
        number = float(value)
        return int(number) if number.is_integer() else number
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def cache_key(
    *, no_cache: bool = False, tenant_cache_enabled: bool = True, **parts: Any
) -> str | None:
    """The key identifying a request; None when the request must not be cached.

    ``parts`` must hold ``tenant_id``, ``model`` (the resolved model's name) and
    ``messages``; every other part (``temperature``, ``max_tokens``, ``top_p``, ``stop``,
    tools…) goes into the key too, and a part that is None counts as absent.
    ``no_cache`` is the request's opt-out (``Cache-Control: no-cache``),
    ``tenant_cache_enabled`` the tenant's (``Tenant.response_cache_enabled``).
    """
    missing = [name for name in REQUIRED_PARTS if parts.get(name) is None]
    if missing:
        raise TypeError(f"cache_key() needs {', '.join(missing)}")
    if no_cache or not tenant_cache_enabled:
        return None
    canonical = _canonical(parts)
    try:
        encoded = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # what orjson refuses (an integer past 64 bits, a lone surrogate)
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        encoded = text.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(encoded).hexdigest()
    return f"{KEY_PREFIX}:rc:{KEY_VERSION}.{RECIPE_VERSION}:{parts['tenant_id']}:{digest}"


def _plain(value: dict) -> bool:
    """A dict of strings only, which canonical JSON takes as it is."""
    for key, item in value.items():  # noqa: SIM110 (a loop costs half what all() does)
        if type(key) is not str or type(item) is not str:
            return False
    return True


def idempotency_key(tenant_id: int, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{KEY_PREFIX}:idem:{KEY_VERSION}:{tenant_id}:{digest}"


# --- Stored form: compact JSON; the content is left out when it is the tokens joined ---


def encode_answer(answer: CachedAnswer) -> str:
    data: dict[str, Any] = {
        "t": answer.tokens,
        "f": answer.finish_reason,
        "p": answer.prompt_tokens,
        "o": answer.completion_tokens,
    }
    if answer.content != "".join(answer.tokens):
        data["c"] = answer.content
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def decode_answer(raw: str | bytes) -> CachedAnswer | None:
    try:
        data = json.loads(raw)
        tokens = [str(token) for token in data["t"]]
        return CachedAnswer(
            content=data["c"] if "c" in data else "".join(tokens),
            tokens=tokens,
            finish_reason=str(data["f"]),
            prompt_tokens=int(data["p"]),
            completion_tokens=int(data["o"]),
        )
    except (ValueError, TypeError, KeyError):
        logger.warning("response cache: unreadable entry ignored")
        return None


# --- Storage --------------------------------------------------------------------------


async def _store(key: str, answer: CachedAnswer, ttl: float) -> None:
    try:
        await get_store().put(key, encode_answer(answer), ttl)
    except StoreUnavailable:
        logger.warning("response cache: store unavailable, answer not stored", exc_info=True)


def _ttl() -> int:
    return int(settings.RESPONSE_CACHE_TTL_SECONDS)


async def rate_limit_and_cache_get(
    tenant: Tenant, key: str | None, *, claim: ClaimOnMiss | None = None
) -> tuple[RateLimitState | None, CachedAnswer | None]:
    """A request's first two checks: its rate limit (raises when spent, see
    :func:`~billing.limits.request_admit`) and its stored answer (None: a miss); on a
    miss, ``claim`` is claimed too, if the store can (:class:`~billing.store.ClaimOnMiss`).

    The store answers them in one call, so billing costs a request one round trip to
    Redis, not two.
    """
    if key is None or _ttl() <= 0:
        return (await limits.request_admit(tenant))[0], None
    state, raw = await limits.request_admit(tenant, read=key, claim=claim)
    return state, None if raw is None else decode_answer(raw)


async def cache_put(key: str | None, answer: CachedAnswer) -> None:
    """Store a complete answer under ``key`` for ``RESPONSE_CACHE_TTL_SECONDS``.

    Only store answers that ended normally (not failed or cancelled ones).
    """
    if key is None or _ttl() <= 0:
        return
    await _store(key, answer, _ttl())
