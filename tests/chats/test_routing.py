"""Routing over deployments: priorities, weights, fallbacks, and the bound on them."""

import asyncio
from collections import Counter

import pytest
from asgiref.sync import async_to_sync

from chats import catalog
from chats.models import LLMModel, ModelFallback


def deploy(name: str, *, tier: str = "", priority: int = 10, weight: int = 1, **fields):
    return LLMModel.objects.create(
        name=name,
        provider="openai_compatible",
        upstream_model=name,
        base_url="http://upstream.test/v1",
        tier=tier,
        priority=priority,
        weight=weight,
        **fields,
    )


def route(**asked) -> list[str]:
    """The deployments a request asking for ``asked`` tries, in order: the engine's lookup."""
    return [d.name for d in async_to_sync(catalog.aresolve_route)(**asked).deployments]


def test_equal_priorities_share_a_tier_by_weight_evenly_interleaved(seeded_catalog):
    deploy("heavy", tier="cheap", weight=3)
    deploy("light", tier="cheap", weight=1)
    firsts = [route(quality="cheap")[0] for _ in range(8)]
    # Smooth weighted round robin: exactly 3:1 over every 4 requests, never bunched.
    assert firsts == ["heavy", "heavy", "light", "heavy"] * 2
    assert Counter(route(quality="cheap")[0] for _ in range(400)) == {"heavy": 300, "light": 100}


def test_the_other_deployments_of_the_tier_follow_by_priority(seeded_catalog):
    deploy("a", tier="cheap", priority=1, weight=1)
    deploy("b", tier="cheap", priority=1, weight=1)
    deploy("later", tier="cheap", priority=5)
    seen = {tuple(route(quality="cheap")) for _ in range(4)}
    assert seen == {("a", "b", "later"), ("b", "a", "later")}


def test_a_model_lists_its_fallbacks_in_order_and_the_tier_ends_with_them(seeded_catalog):
    primary = deploy("primary", tier="frontier", priority=1)
    first, second = deploy("first-fb"), deploy("second-fb")
    ModelFallback.objects.create(model=primary, fallback=second, position=2)
    ModelFallback.objects.create(model=primary, fallback=first, position=1)
    assert route(model="primary") == ["primary", "first-fb", "second-fb"]
    assert route(quality="frontier") == ["primary", "first-fb", "second-fb"]
    assert route(model="first-fb") == ["first-fb"]  # fallbacks are not symmetric


def test_the_demo_never_stands_in_for_a_real_model_unless_named(seeded_catalog):
    primary = deploy("real", tier="balanced", priority=1)
    assert "demo/balanced" in LLMModel.objects.values_list("name", flat=True)
    assert route(quality="balanced") == ["real"]
    ModelFallback.objects.create(model=primary, fallback=LLMModel.objects.get(name="demo/cheap"))
    assert route(quality="balanced") == ["real", "demo/cheap"]


def test_unusable_fallbacks_are_left_out_and_the_attempts_are_bounded(
    seeded_catalog, settings, monkeypatch
):
    monkeypatch.delenv("SOME_UNSET_KEY", raising=False)
    primary = deploy("p")
    names = []
    for index in range(5):
        fallback = deploy(f"fb{index}", api_key_env="SOME_UNSET_KEY" if index == 0 else "")
        ModelFallback.objects.create(model=primary, fallback=fallback, position=index)
        names.append(fallback.name)
    inactive = deploy("off", is_active=False)
    ModelFallback.objects.create(model=primary, fallback=inactive, position=0)
    settings.MODEL_FALLBACK_ATTEMPTS = 3
    assert route(model="p") == ["p", "fb1", "fb2"]
    settings.MODEL_FALLBACK_ATTEMPTS = 10
    assert route(model="p") == ["p", "fb1", "fb2", "fb3", "fb4"]


def test_the_admin_sets_a_models_weight_and_its_fallbacks_in_order(admin_client, seeded_catalog):
    primary, first, second = deploy("primary"), deploy("first-fb"), deploy("second-fb")
    url = f"/admin/chats/llmmodel/{primary.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200 and b"fallback_links-TOTAL_FORMS" in page.content
    form = {
        "name": "primary",
        "provider": "openai_compatible",
        "upstream_model": "primary",
        "base_url": "http://upstream.test/v1",
        "api_key_env": "",
        "tier": "",
        "priority": "10",
        "weight": "4",
        "context_window": "128000",
        "max_output_tokens": "1024",
        "input_price_per_1k": "0",
        "output_price_per_1k": "0",
        "is_active": "on",
        "fallback_links-TOTAL_FORMS": "2",
        "fallback_links-INITIAL_FORMS": "0",
        "fallback_links-0-position": "2",
        "fallback_links-0-fallback": str(first.pk),
        "fallback_links-1-position": "1",
        "fallback_links-1-fallback": str(second.pk),
    }
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    primary.refresh_from_db()
    assert primary.weight == 4
    assert route(model="primary") == ["primary", "second-fb", "first-fb"]
    # A model cannot be its own fallback; a weight is at least 1.
    form.update({"weight": "0", "fallback_links-0-fallback": str(primary.pk)})
    form.update({"fallback_links-TOTAL_FORMS": "1", "fallback_links-INITIAL_FORMS": "0"})
    LLMModel.objects.get(pk=primary.pk).fallback_links.all().delete()
    refused = admin_client.post(url, form)
    assert refused.status_code == 200
    assert LLMModel.objects.get(pk=primary.pk).weight == 4


# --- the per-process copy of the catalog -----------------------------------------------


def counting_reads(monkeypatch) -> list[int]:
    """One entry per read of the catalog from the database."""
    reads: list[int] = []
    read = catalog._read

    def counted():
        reads.append(1)
        return read()

    monkeypatch.setattr(catalog, "_read", counted)
    return reads


async def reads_finished() -> None:
    while len(catalog._reads):
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_requests_finding_the_catalog_stale_wait_on_one_read(seeded_catalog, monkeypatch):
    reads = counting_reads(monkeypatch)
    routes = await asyncio.gather(*(catalog.aresolve_route(quality="cheap") for _ in range(20)))
    assert len(reads) == 1
    assert len(routes) == 20


@pytest.mark.asyncio
async def test_a_catalog_in_use_is_read_again_before_it_goes_stale(
    seeded_catalog, monkeypatch, settings
):
    settings.MODEL_CATALOG_TTL_SECONDS = 0.4
    reads = counting_reads(monkeypatch)
    await catalog.aresolve_route(quality="cheap")
    first = catalog._catalog
    await catalog.aresolve_route(quality="cheap")
    assert len(reads) == 1
    await asyncio.sleep(0.25)  # past half its time: this request starts the next read
    await catalog.aresolve_route(quality="cheap")
    assert catalog._catalog is first  # answered from the copy, not waiting on the read
    await reads_finished()
    assert len(reads) == 2 and catalog._catalog is not first


def test_a_read_overtaken_by_a_clear_stores_nothing(seeded_catalog, monkeypatch):
    models = LLMModel.objects

    class ClearedMeanwhile:  # the catalog is cleared (a model saved) while it is read
        def filter(self, **lookups):
            catalog.clear_catalog_cache()
            return models.filter(**lookups)

    monkeypatch.setattr(LLMModel, "objects", ClearedMeanwhile())
    assert catalog._active_models()  # the read answers what it found
    assert catalog._catalog is None
