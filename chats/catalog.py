"""Model routing: a quality tier or an explicit model name → the configured models
(deployments) to try, in order, with their provider instances.

A tier's deployments are its active, configured models: the lowest priority first, the
models of equal priority taking turns in proportion to their weights (a smooth weighted
round robin, per process: over any run of requests each gets its share to within one);
then the tier's other models, by priority. After them come the catalog fallbacks of the
first one, in their order. An explicit model is followed by its fallbacks only. An
offline model (the demo) follows only other offline models, unless listed as a fallback
by name: a real model that fails must not be answered by the stand-in. At most
``MODEL_FALLBACK_ATTEMPTS`` deployments are tried; see ``chats.failover``.
"""

import os
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from chatproject.db import db_call
from chatproject.errors import ApiError, ErrorCode
from chatproject.shared_reads import SharedReads
from chats.models import LLMModel, ModelFallback
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
    offline: bool = False  # the demo: no upstream behind it


@dataclass(frozen=True)
class Route:
    """What a request is answered by: its deployments in the order they are tried."""

    asked: str  # what the client named: a model's name, or ``tier:<name>``
    deployments: tuple[ResolvedModel, ...]

    @property
    def first(self) -> ResolvedModel:
        return self.deployments[0]


@dataclass
class _Catalog:
    loaded: float
    models: list[LLMModel]
    fallbacks: dict[str, list[str]] = field(default_factory=dict)  # name → its fallbacks


_catalog: _Catalog | None = None
_generation = 0  # bumped by clear_catalog_cache
_reads: SharedReads[_Catalog] = SharedReads()
_providers: dict[tuple, Provider] = {}
# Smooth weighted round robin: the running score of each model of a group of equal
# priority, by the group's names.
_turns: dict[tuple[str, ...], dict[str, int]] = {}


def _fresh_catalog() -> _Catalog | None:
    """The cached catalog, unless it is older than the TTL."""
    if _catalog is None or time.monotonic() - _catalog.loaded > settings.MODEL_CATALOG_TTL_SECONDS:
        return None
    return _catalog


def _load() -> _Catalog:
    loaded = _fresh_catalog()
    return loaded if loaded is not None else _read()


def _read() -> _Catalog:
    global _catalog
    generation = _generation
    links = ModelFallback.objects.filter(model__is_active=True, fallback__is_active=True)
    fallbacks: dict[str, list[str]] = {}
    for model, fallback in links.values_list("model__name", "fallback__name"):
        fallbacks.setdefault(model, []).append(fallback)  # in position order
    models = list(LLMModel.objects.filter(is_active=True))
    loaded = _Catalog(time.monotonic(), models, fallbacks)
    if generation == _generation:  # not cleared while it was read
        _catalog = loaded
    return loaded


async def _read_async() -> _Catalog:
    return await db_call(_read)


def _active_models() -> list[LLMModel]:
    return _load().models


def clear_catalog_cache() -> None:
    global _catalog, _generation
    _catalog, _generation = None, _generation + 1
    _turns.clear()


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
        offline=_is_offline(model),
    )


def _is_offline(model: LLMModel) -> bool:
    kind = provider_kind(model.provider)
    return kind is not None and kind.offline


async def aresolve_route(*, quality: str | None = None, model: str | None = None) -> Route:
    """An explicit ``model`` wins over ``quality``; errors are MODEL_NOT_FOUND (a bad
    tier: VALIDATION_ERROR). The database only when the cached catalog is stale (one read
    for the requests that find it so, and started ahead of that under steady use)."""
    copy = (_catalog.loaded, _catalog) if _catalog is not None else None
    life = settings.MODEL_CATALOG_TTL_SECONDS
    return _route(await _reads.latest("catalog", copy, life, _read_async), quality, model)


def _route(loaded: _Catalog, quality: str | None, model: str | None) -> Route:
    models = loaded.models
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
        return _ordered(loaded, model, [found])
    tier = quality or DEFAULT_QUALITY
    if tier not in QUALITY_TIERS:  # a bad parameter, as the HTTP bodies' validation says
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Unknown quality tier {tier!r}.",
            details={"quality": [f"Choose one of: {', '.join(QUALITY_TIERS)}."]},
        )
    candidates = [m for m in models if m.tier == tier and is_configured(m)]
    if not candidates:
        raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"No configured model serves tier {tier!r}.")
    return _ordered(loaded, f"tier:{tier}", _tier_order(candidates))


def _tier_order(candidates: list[LLMModel]) -> list[LLMModel]:
    """The tier's models by priority, the first group's turn-taker first."""
    groups: dict[int, list[LLMModel]] = {}
    for m in sorted(candidates, key=lambda m: (m.priority, -m.weight, m.name)):
        groups.setdefault(m.priority, []).append(m)
    ordered = [m for _, group in sorted(groups.items()) for m in group]
    first_group = groups[min(groups)]
    if len(first_group) > 1:
        chosen = _take_turn(first_group)
        ordered.remove(chosen)
        ordered.insert(0, chosen)
    return ordered


def _take_turn(group: list[LLMModel]) -> LLMModel:
    """Smooth weighted round robin: each model's score grows by its weight, the highest
    serves and gives back the group's total weight (deterministic, evenly interleaved)."""
    key = tuple(m.name for m in group)
    scores = _turns.setdefault(key, dict.fromkeys(key, 0))
    for m in group:
        scores[m.name] += max(1, m.weight)
    chosen = max(group, key=lambda m: scores[m.name])
    scores[chosen.name] -= sum(max(1, m.weight) for m in group)
    return chosen


def _ordered(loaded: _Catalog, asked: str, ordered: list[LLMModel]) -> Route:
    """The route: ``ordered`` then the first one's fallbacks, each once, configured ones
    only, an offline model only after offline ones (or when listed by name), bounded."""
    by_name = {m.name: m for m in loaded.models}
    first = ordered[0]
    named = [by_name[name] for name in loaded.fallbacks.get(first.name, ()) if name in by_name]
    chosen: list[LLMModel] = []
    for m in [*ordered, *named]:
        if m in chosen or not is_configured(m):
            continue
        if _is_offline(m) and not _is_offline(first) and m not in named:
            continue
        chosen.append(m)
    limit = max(1, settings.MODEL_FALLBACK_ATTEMPTS)
    return Route(asked, tuple(_resolved(m) for m in chosen[:limit]))


def _enabled_by(model: LLMModel) -> str:
    if model.api_key_env:
        return f"The server enables it once {model.api_key_env} is set in its environment."
    return "The server enables it once the model has a base URL in the catalog."


def available_models() -> list[LLMModel]:
    return [m for m in _active_models() if is_configured(m)]
