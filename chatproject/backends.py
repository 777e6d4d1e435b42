"""An implementation of a store chosen by ``REDIS_URL``: Redis when it is set, this
process's memory otherwise. Chosen at first use, and again when the setting changes
(tests change it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.core.signals import setting_changed

T = TypeVar("T")
M = TypeVar("M")


class RedisOrMemory(Generic[T, M]):
    def __init__(self, redis: Callable[[], T], memory: M) -> None:
        self._redis, self.memory = redis, memory
        self._chosen: T | M | None = None
        setting_changed.connect(self._choose_again, weak=False)

    def get(self) -> T | M:
        if self._chosen is None:
            self._chosen = self._redis() if settings.REDIS_URL else self.memory
        return self._chosen

    def reset(self, memory: M) -> M:
        """Start afresh with ``memory`` as this process's state (tests)."""
        self.memory, self._chosen = memory, None
        return memory

    def _choose_again(self, *, setting: str, **kwargs: Any) -> None:
        if setting == "REDIS_URL":
            self._chosen = None
