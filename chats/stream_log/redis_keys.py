"""The Redis keys of the stream logs, and what their writers and readers share."""

from django.conf import settings

from chatproject.redis_multiplexed import Script

KEY_PREFIX = "streams"

# Deletes a key only while it holds the given value (a claim, or a chat's active stream,
# that another request may have taken since).
DELETE_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
DELETE_IF = Script(DELETE_IF_LUA)


def log_key(log_id: str) -> str:
    return f"{KEY_PREFIX}:log:{log_id}"


def claim_key(cache_key: str) -> str:
    return f"{KEY_PREFIX}:inflight:{cache_key}"


def active_key(tenant_id: int, stream_format: str, chat_id: str) -> str:
    return f"{KEY_PREFIX}:active:{tenant_id}:{stream_format}:{chat_id}"


def stop_key(log_id: str) -> str:
    return f"{KEY_PREFIX}:stop:{log_id}"


def ttl_ms() -> int:
    """How long a log (and its active-stream and stop keys) lasts after its last write."""
    return max(1, round(float(settings.STREAM_LOG_TTL_SECONDS) * 1000))
