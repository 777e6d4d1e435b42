"""The response cache: keys, opt-outs, storage in both backends, TTL, idempotent replies."""

import asyncio
import copy
import json
import uuid
from decimal import Decimal

import pytest
import redis
from django.conf import settings as django_settings
from hypothesis import given
from hypothesis import strategies as st

from billing import response_cache
from billing.response_cache import (
    CachedAnswer,
    cache_key,
    cache_put,
    decode_answer,
    encode_answer,
    rate_limit_and_cache_get,
)
from chatproject.errors import ApiError, ErrorCode

BASE = {
    "tenant_id": 7,
    "model": "demo/balanced",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "temperature": 0.7,
    "max_tokens": 256,
    "no_cache": False,
}
ANSWER = CachedAnswer(
    content="2 + 2 = 4.",
    tokens=["2", " +", " 2", " =", " 4."],
    finish_reason="stop",
    prompt_tokens=12,
    completion_tokens=5,
)
LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(params=["memory", "redis"])
def backend(request, settings) -> str:
    if request.param == "redis":
        if not django_settings.REDIS_URL:
            pytest.skip("needs REDIS_URL")
    else:
        settings.REDIS_URL = ""
        settings.CACHES = {"default": {**LOCMEM["default"], "LOCATION": f"test-{uuid.uuid4()}"}}
    return request.param


async def lookup(key: str | None) -> CachedAnswer | None:
    """What a request finds stored under ``key`` (its rate limit, unlimited here, aside)."""
    tenant = limited_tenant(requests_per_minute=None, burst=None)
    return (await rate_limit_and_cache_get(tenant, key))[1]


def fresh_parts(**changes) -> dict:
    """The base request with a message no earlier run has cached."""
    parts = copy.deepcopy(BASE)
    parts["messages"][0]["content"] += f" ({uuid.uuid4()})"
    return parts | changes


# --- keys -----------------------------------------------------------------------------


def test_key_is_stable_for_equal_requests():
    assert cache_key(**BASE) == cache_key(**copy.deepcopy(BASE))
    reordered = dict(reversed(list(BASE.items())))
    reordered["messages"] = [{"content": "What is 2+2?", "role": "user"}]
    assert cache_key(**reordered) == cache_key(**BASE)


def test_what_the_fast_encoding_refuses_still_makes_a_key():
    # An integer past 64 bits and a lone surrogate: encoded the slow way, still one key
    # for one request and another for another.
    big = BASE | {"max_tokens": 2**70}
    assert cache_key(**big) == cache_key(**copy.deepcopy(big)) != cache_key(**BASE)
    odd = BASE | {"messages": [{"role": "user", "content": "\ud800"}]}
    assert cache_key(**odd) == cache_key(**copy.deepcopy(odd)) != cache_key(**BASE)


def test_key_names_the_tenant_and_hides_the_request():
    key = cache_key(**BASE)
    prefix, digest = key.rsplit(":", 1)
    assert prefix == "billing:rc:v1.2:7"  # the stored format's version, the recipe's
    assert len(digest) == 64
    assert "2+2" not in key


@pytest.mark.parametrize(
    "change",
    [
        {"tenant_id": 8},
        {"model": "demo/cheap"},
        {"messages": [{"role": "user", "content": "What is 2+3?"}]},
        {"messages": [{"role": "system", "content": "What is 2+2?"}]},
        {"messages": [*BASE["messages"], {"role": "assistant", "content": "4"}]},
        {"temperature": 0.8},
        {"temperature": 0},
        {"max_tokens": 255},
        {"top_p": 0.9},
        {"stop": ["\n"]},
        {"seed": 1},
    ],
)
def test_key_differs_when_anything_changes(change):
    assert cache_key(**BASE | change) != cache_key(**BASE)


def test_equal_numbers_make_equal_keys():
    assert cache_key(**BASE | {"temperature": 1}) == cache_key(**BASE | {"temperature": 1.0})
    assert cache_key(**BASE | {"top_p": None}) == cache_key(**BASE)


@pytest.mark.parametrize("opt_out", [{"no_cache": True}, {"tenant_cache_enabled": False}])
def test_opted_out_requests_have_no_key(opt_out):
    assert cache_key(**BASE | opt_out) is None


@pytest.mark.parametrize("part", ["tenant_id", "model", "messages"])
def test_key_needs_tenant_model_and_messages(part):
    with pytest.raises(TypeError):
        cache_key(**{k: v for k, v in BASE.items() if k != part})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(
    messages=st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"]), "content": st.text()}
        ),
        min_size=1,
        max_size=4,
    ),
    extra=st.dictionaries(st.sampled_from(["top_p", "stop", "tools", "seed"]), json_values),
)
def test_key_depends_only_on_the_content(messages, extra):
    parts = {"tenant_id": 1, "model": "m", "messages": messages, **extra}
    shuffled = json.loads(json.dumps(dict(reversed(list(parts.items())))))
    assert cache_key(**parts) == cache_key(**shuffled)
    assert cache_key(**parts) != cache_key(**parts | {"tenant_id": 2})


# --- stored form ----------------------------------------------------------------------


def test_stored_form_is_compact_and_round_trips():
    raw = encode_answer(ANSWER)
    assert '"c"' not in raw  # the content is the tokens joined
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)
    assert decode_answer(raw) == ANSWER
    odd = CachedAnswer("differs", ["a"], "length", 1, 1)
    assert decode_answer(encode_answer(odd)) == odd


def test_an_unreadable_entry_is_a_miss():
    assert decode_answer("{not json") is None
    assert decode_answer('{"t": ["a"]}') is None


# --- both backends --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_put_then_get_round_trips(backend):
    key = cache_key(**fresh_parts())
    assert await lookup(key) is None
    await cache_put(key, ANSWER)
    assert await lookup(key) == ANSWER


@pytest.mark.asyncio
async def test_another_tenant_does_not_see_the_answer(backend):
    parts = fresh_parts()
    await cache_put(cache_key(**parts), ANSWER)
    assert await lookup(cache_key(**parts | {"tenant_id": 8})) is None


@pytest.mark.asyncio
async def test_none_key_is_never_stored(backend):
    await cache_put(None, ANSWER)
    assert await lookup(None) is None


@pytest.mark.asyncio
async def test_ttl_zero_turns_the_cache_off(backend, settings):
    settings.RESPONSE_CACHE_TTL_SECONDS = 0
    key = cache_key(**fresh_parts())
    await cache_put(key, ANSWER)
    settings.RESPONSE_CACHE_TTL_SECONDS = 3600
    assert await lookup(key) is None


@pytest.mark.asyncio
async def test_entries_expire_after_the_ttl_in_memory(settings, monkeypatch):
    settings.REDIS_URL = ""
    settings.CACHES = LOCMEM
    settings.RESPONSE_CACHE_TTL_SECONDS = 60
    now = [1_000_000.0]
    monkeypatch.setattr("django.core.cache.backends.locmem.time.time", lambda: now[0])
    key = cache_key(**fresh_parts())
    await cache_put(key, ANSWER)
    now[0] += 59
    assert await lookup(key) == ANSWER
    now[0] += 2
    assert await lookup(key) is None


@pytest.mark.asyncio
async def test_entries_expire_after_the_ttl_in_redis(settings):
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    settings.RESPONSE_CACHE_TTL_SECONDS = 1
    key = cache_key(**fresh_parts())
    await cache_put(key, ANSWER)
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert 0 < client.pttl(key) <= 1000
    assert json.loads(client.get(key))["o"] == 5
    client.close()
    await asyncio.sleep(1.1)
    assert await lookup(key) is None


@pytest.mark.asyncio
async def test_redis_outage_is_a_miss(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    key = cache_key(**fresh_parts())
    await cache_put(key, ANSWER)
    assert await lookup(key) is None


# --- the rate limit and the lookup in one call ----------------------------------------


def limited_tenant(requests_per_minute=1, burst=3):
    """An unsaved tenant with its plan loaded, under an id no other run used."""
    from billing.models import Plan, Tenant

    plan = Plan(name="p", requests_per_minute=requests_per_minute, burst=burst)
    return Tenant(pk=uuid.uuid4().int % 2**31, name="t", plan=plan)


@pytest.mark.asyncio
async def test_rate_limit_and_lookup_answer_together(backend):
    tenant = limited_tenant(burst=3)
    key = cache_key(**fresh_parts(tenant_id=tenant.pk))
    state, cached = await rate_limit_and_cache_get(tenant, key)
    assert (state.remaining, cached) == (2, None)
    await cache_put(key, ANSWER)
    state, cached = await rate_limit_and_cache_get(tenant, key)
    assert (state.remaining, cached) == (1, ANSWER)
    await rate_limit_and_cache_get(tenant, None)  # no key: the limit still counts
    with pytest.raises(ApiError) as raised:  # a stored answer does not get past the limit
        await rate_limit_and_cache_get(tenant, key)
    assert raised.value.code == ErrorCode.RATE_LIMITED


@pytest.mark.asyncio
async def test_unlimited_plan_still_reads_the_cache(backend):
    tenant = limited_tenant(requests_per_minute=None, burst=None)
    key = cache_key(**fresh_parts(tenant_id=tenant.pk))
    await cache_put(key, ANSWER)
    assert await rate_limit_and_cache_get(tenant, key) == (None, ANSWER)


@pytest.mark.asyncio
async def test_the_combined_call_is_one_redis_command(monkeypatch):
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    from chatproject.redis_multiplexed import _Protocol

    tenant = limited_tenant()
    key = cache_key(**fresh_parts(tenant_id=tenant.pk))
    await cache_put(key, ANSWER)
    commands = []
    send = _Protocol.send

    def counting(self, batch):
        commands.extend(command[0] for command in batch)
        return send(self, batch)

    monkeypatch.setattr(_Protocol, "send", counting)
    assert (await rate_limit_and_cache_get(tenant, key))[1] == ANSWER
    assert commands == ["EVALSHA"]


@pytest.mark.asyncio
async def test_the_combined_call_survives_a_flushed_script_cache():
    if not django_settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    tenant = limited_tenant()
    key = cache_key(**fresh_parts(tenant_id=tenant.pk))
    await cache_put(key, ANSWER)
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    client.script_flush()  # as after a Redis restart
    client.close()
    state, cached = await rate_limit_and_cache_get(tenant, key)
    assert (state.remaining, cached) == (2, ANSWER)


@pytest.mark.asyncio
async def test_the_combined_call_limits_in_memory_and_misses_while_redis_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    tenant = limited_tenant(burst=3)
    key = cache_key(**fresh_parts(tenant_id=tenant.pk))
    for remaining in (2, 1, 0):  # the plan's burst, counted in this process
        state, cached = await rate_limit_and_cache_get(tenant, key)
        assert (state.remaining, cached) == (remaining, None)
    with pytest.raises(ApiError) as refused:
        await rate_limit_and_cache_get(tenant, key)
    assert refused.value.code == ErrorCode.RATE_LIMITED


# --- idempotent replies ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_idempotency_claims_replay_and_refuse(backend):
    from billing.idempotency import (
        Receipt,
        idempotency_abandon,
        idempotency_claim,
        idempotency_complete,
    )

    client_key = f"order-{uuid.uuid4()}"
    assert (await idempotency_claim(1, client_key, "fp")).state == "claimed"
    assert (await idempotency_claim(1, client_key, "fp")).state == "in_progress"
    assert (await idempotency_claim(1, client_key, "other")).state == "mismatch"
    assert (await idempotency_claim(2, client_key, "fp")).state == "claimed"  # per tenant
    receipt = Receipt(uuid.uuid4(), Decimal("0.012345"), Decimal("987.6"), "MISS")
    await idempotency_complete(1, client_key, "fp", ANSWER, receipt)
    replay = await idempotency_claim(1, client_key, "fp")
    assert (replay.state, replay.answer, replay.receipt) == ("replay", ANSWER, receipt)
    await idempotency_abandon(2, client_key)
    assert (await idempotency_claim(2, client_key, "fp")).state == "claimed"


def test_idempotency_keys_are_tenant_scoped_and_bounded():
    key = response_cache.idempotency_key(3, "x" * 10_000)
    assert key.startswith("billing:idem:v1:3:")
    assert len(key) < 100
