"""The one GenerationRequest builder every transport uses."""

from chats.engine import GenerationRequest
from chats.transports.requests import generation_request, model_choice, wants_cache


def test_left_out_options_take_the_engines_defaults():
    built = generation_request(None, [], temperature=None, quality=None, max_tokens=None)
    default = GenerationRequest(tenant=None, messages=[])
    assert (built.temperature, built.quality, built.max_tokens) == (
        default.temperature,
        default.quality,
        default.max_tokens,
    )
    assert generation_request(None, [], temperature=0.2).temperature == 0.2


def test_cache_control_opts_out_as_the_header_does():
    assert wants_cache("") and wants_cache("max-age=0")
    assert not wants_cache("no-cache") and not wants_cache("No-Store")
    assert generation_request(None, [], cache_control="no-cache").use_cache is False
    assert generation_request(None, []).use_cache is True


def test_idempotency_keys_and_request_ids():
    built = generation_request(None, [], idempotency_key="k" * 300, request_id="r1")
    assert (built.idempotency_key, built.request_id) == ("k" * 255, "r1")
    assert generation_request(None, []).request_id  # made up when the client sent none


def test_a_tier_name_as_the_model_routes_by_quality():
    assert model_choice("cheap") == ("cheap", None)
    assert model_choice("gpt-4o") == (None, "gpt-4o")
