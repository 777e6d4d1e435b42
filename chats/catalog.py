"""Model routing: a quality tier or an explicit model name → a configured model and its
provider instance."""

import os
import time
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode
from chats.models import LLMModel
from chats.providers import Provider, Upstream, provider_kind

QUALITY_TIERS: tuple[str, ...] = tuple(LLMModel.Tier.values)
DEFAULT_QUALITY: str = LLMModel.Tier.BALANCED.value


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    provider_name: str
    upstream_model: str
    context_window: int
    max_output_tokens: int
    input_price_per_1k: Decimal
    output_price_per_1k: Decimal
    provider: Provider


_catalog: tuple[float, list[LLMModel]] | None = None
_providers: dict[tuple, Provider] = {}


def _fresh_catalog() -> list[LLMModel] | None:
    """The cached active models, unless they are older than the TTL."""
    if _catalog is None or time.monotonic() - _catalog[0] > settings.MODEL_CATALOG_TTL_SECONDS:
        return None
    return _catalog[1]


def _active_models() -> list[LLMModel]:
    global _catalog
    models = _fresh_catalog()
    if models is None:
        models = list(LLMModel.objects.filter(is_active=True))
        _catalog = (time.monotonic(), models)
    return models


def clear_catalog_cache() -> None:
    global _catalog
    _catalog = None


def _credential(model: LLMModel) -> str | None:
    return os.environ.get(model.api_key_env) if model.api_key_env else None


def is_configured(model: LLMModel) -> bool:
    """Usable now: an offline provider (the demo), or one whose credential (if any) is set."""
    kind = provider_kind(model.provider)
    if kind is None:
        return False  # no module registers this provider (any more)
    if kind.offline:
        return True
    if model.api_key_env:
        return bool(_credential(model))
    return bool(model.base_url)


def _provider_for(model: LLMModel) -> Provider:
    key = (model.provider, model.base_url, model.api_key_env, model.name)
    provider = _providers.get(key)
    if provider is None:
        provider = _build_provider(model)
        _providers[key] = provider
    return provider


def _build_provider(model: LLMModel) -> Provider:
    kind = provider_kind(model.provider)
    assert kind is not None  # only configured models are resolved
    base_url = model.base_url or kind.default_base_url
    return kind.build(
        Upstream(
            base_url=base_url,
            api_key=_credential(model),
            timeout=settings.LLM_TIMEOUT_SECONDS,
            name=_upstream(model, base_url),
            token_delay=settings.DEMO_TOKEN_DELAY_MS / 1000,
        )
    )


def _upstream(model: LLMModel, base_url: str) -> str:
    """How a provider's errors name it: the model and where it is served from, so a
    registered server that is down is recognisable in the message."""
    return f"model {model.name!r} at {base_url}"


def _resolved(model: LLMModel) -> ResolvedModel:
    return ResolvedModel(
        name=model.name,
        provider_name=model.provider,
        upstream_model=model.upstream_model,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        input_price_per_1k=model.input_price_per_1k,
        output_price_per_1k=model.output_price_per_1k,
        provider=_provider_for(model),
    )


def resolve_model(*, quality: str | None = None, model: str | None = None) -> ResolvedModel:
    """An explicit ``model`` wins over ``quality``; errors are MODEL_NOT_FOUND."""
    return _resolve(_active_models(), quality, model)


async def aresolve_model(*, quality: str | None = None, model: str | None = None) -> ResolvedModel:
    """:func:`resolve_model` from async code: the database only when the cache is stale."""
    models = _fresh_catalog()
    if models is None:
        models = await db_call(_active_models)
    return _resolve(models, quality, model)


def _resolve(models: list[LLMModel], quality: str | None, model: str | None) -> ResolvedModel:
    if model:
        found = next((m for m in models if m.name == model), None)
        if found is None or not is_configured(found):
            usable = ", ".join(m.name for m in models if is_configured(m))
            if found is None:
                problem = f"Unknown model: {model!r}."
            else:  # the variable's name, never its value
                problem = f"Model not available on this server: {model!r}. {_enabled_by(found)}"
            raise ApiError(
                ErrorCode.MODEL_NOT_FOUND,
                problem,
                details={"model": [f"Choose one of: {usable}."]},
            )
        return _resolved(found)
    tier = quality or DEFAULT_QUALITY
    if tier not in QUALITY_TIERS:  # a bad parameter, as the HTTP bodies' validation says
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Unknown quality tier {tier!r}.",
            details={"quality": [f"Choose one of: {', '.join(QUALITY_TIERS)}."]},
        )
    candidates = sorted(
        (m for m in models if m.tier == tier and is_configured(m)), key=lambda m: m.priority
    )
    if not candidates:
        raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"No configured model serves tier {tier!r}.")
    return _resolved(candidates[0])


def _enabled_by(model: LLMModel) -> str:
    if model.api_key_env:
        return f"The server enables it once {model.api_key_env} is set in its environment."
    return "The server enables it once the model has a base URL in the catalog."


def available_models() -> list[LLMModel]:
    return [m for m in _active_models() if is_configured(m)]
