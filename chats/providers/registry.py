"""The kinds of provider a catalog entry can name, each registered by its own module.

A provider module builds its provider from an `Upstream` (where the catalog says the model
is served, with which credential) and registers that under the key the catalog stores, so
adding a native provider is its module and one `register` call in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import Provider


@dataclass(frozen=True)
class Upstream:
    """Where and how one catalog entry is served."""

    base_url: str  # the catalog's, else the kind's default
    api_key: str | None
    timeout: float  # the longest wait for any byte
    name: str  # how the provider's errors name it
    token_delay: float = 0.0  # the offline demo's pause between tokens


@dataclass(frozen=True)
class ProviderKind:
    key: str  # what the catalog stores
    label: str  # what the admin shows
    build: Callable[[Upstream], Provider]
    default_base_url: str = ""  # used when the catalog entry has none
    offline: bool = False  # needs no credential and no server (the demo)


_KINDS: dict[str, ProviderKind] = {}


def register(
    key: str,
    label: str,
    build: Callable[[Upstream], Provider],
    *,
    default_base_url: str = "",
    offline: bool = False,
) -> None:
    if key in _KINDS:
        raise ValueError(f"Provider kind {key!r} is registered twice.")
    _KINDS[key] = ProviderKind(key, label, build, default_base_url, offline)


def provider_kind(key: str) -> ProviderKind | None:
    """The registered kind, or None for a key no module registers (any more)."""
    return _KINDS.get(key)


def provider_choices() -> list[tuple[str, str]]:
    """The catalog's choices, as registered (a callable, so no migration lists them)."""
    return [(kind.key, kind.label) for kind in _KINDS.values()]
