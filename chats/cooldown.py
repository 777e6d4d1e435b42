"""Cool-downs of deployments that keep failing: skipped by every process for a while.

A deployment (a catalog model) that fails ``MODEL_COOLDOWN_FAILURES`` times within
``MODEL_COOLDOWN_SECONDS`` (connection errors, time-outs, 429 and 5xx answers, before or
after its first token) is skipped by routing for the next ``MODEL_COOLDOWN_SECONDS``,
so that requests stop waiting on it and it gets room to recover. With ``REDIS_URL`` the
counts and cool-downs are Redis keys that every process reads (one MGET per request);
without it they live in this process's memory. A Redis failure cools nothing down:
routing never fails because its notes cannot be read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from django.conf import settings

from chatproject.redis_multiplexed import Script, get_multiplexed

logger = logging.getLogger(__name__)

KEY_PREFIX = "models"

# Count one failure; the count lasts a window from the first one, and the one that
# reaches the threshold starts the cool-down and begins a new count.
_FAIL_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
_FAIL = Script(_FAIL_LUA)


def _fails_key(name: str) -> str:
    return f"{KEY_PREFIX}:fails:{name}"


def _cool_key(name: str) -> str:
    return f"{KEY_PREFIX}:cool:{name}"


def _window_ms() -> int:
    return max(1, round(settings.MODEL_COOLDOWN_SECONDS * 1000))


async def cooling(names: Iterable[str]) -> set[str]:
    """Those of ``names`` that are cooling down now."""
    names = list(names)
    if not names:
        return set()
    if not settings.REDIS_URL:
        now = time.monotonic()
        return {name for name in names if _memory_cool.get(name, 0.0) > now}
    try:
        found = await get_multiplexed().execute("MGET", *(_cool_key(name) for name in names))
    except redis.RedisError:
        logger.warning("cool-downs: Redis unavailable, every deployment is tried")
        return set()
    return {name for name, value in zip(names, found, strict=True) if value is not None}


async def record_failure(name: str) -> bool:
    """Count a failure of deployment ``name``; True when it starts a cool-down."""
    threshold = max(1, settings.MODEL_COOLDOWN_FAILURES)
    if not settings.REDIS_URL:
        return _memory_failure(name, threshold)
    try:
        started = await get_multiplexed().run_script(
            _FAIL, [_fails_key(name), _cool_key(name)], [_window_ms(), threshold]
        )
    except redis.RedisError:
        logger.warning("cool-downs: Redis unavailable, failure of %s not counted", name)
        return False
    if started:
        logger.warning("model %s failed %d times: cooling down", name, threshold)
    return bool(started)


# --- In memory (no Redis): one process -------------------------------------------------

_memory_fails: dict[str, tuple[int, float]] = {}  # name → (count, end of its window)
_memory_cool: dict[str, float] = {}  # name → end of its cool-down


def _memory_failure(name: str, threshold: int) -> bool:
    now, window = time.monotonic(), settings.MODEL_COOLDOWN_SECONDS
    count, ends = _memory_fails.get(name, (0, 0.0))
    count = count + 1 if ends > now else 1
    if count >= threshold:
        _memory_fails.pop(name, None)
        _memory_cool[name] = now + window
        logger.warning("model %s failed %d times: cooling down", name, threshold)
        return True
    _memory_fails[name] = (count, ends if ends > now else now + window)
    return False


def forget() -> None:
    """Clear this process's counts and cool-downs (tests)."""
    _memory_fails.clear()
    _memory_cool.clear()
