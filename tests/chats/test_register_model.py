import io
import re
import shlex

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.management import CommandError, call_command

from chats import catalog
from chats.engine import ErrorEvent, GenerationRequest, start_generation
from chats.models import LLMModel
from tests.factories import make_tenant
from tests.live import ROOT, free_port

pytestmark = pytest.mark.django_db


def test_register_and_update_an_openai_compatible_model():
    call_command(
        "register_model",
        "llama-3-8b",
        "--base-url",
        "http://localhost:11434/v1/",
        "--tier",
        "cheap",
        "--priority",
        "1",
        "--output-price",
        "0.5",
        stdout=io.StringIO(),
    )
    model = LLMModel.objects.get(name="llama-3-8b")
    assert (model.provider, model.base_url, model.upstream_model, model.tier) == (
        "openai_compatible",
        "http://localhost:11434/v1",
        "llama-3-8b",
        "cheap",
    )
    call_command(
        "register_model", "llama-3-8b", "--base-url", "http://gpu:8000/v1", stdout=io.StringIO()
    )
    assert LLMModel.objects.get(name="llama-3-8b").base_url == "http://gpu:8000/v1"


@pytest.mark.parametrize(
    "args", [("--base-url", "not a url"), ("--base-url", "http://x/v1", "--input-price", "-1")]
)
def test_bad_arguments_are_clear_errors(args):
    with pytest.raises(CommandError):
        call_command("register_model", "m", *args, stdout=io.StringIO())


# --- the README's example, a server that is down, removing a model ---------------------


def route(**asked) -> catalog.Route:
    """The route a request asking for ``asked`` takes: the engine's lookup."""
    return async_to_sync(catalog.aresolve_route)(**asked)


def readme_command(name: str) -> list[str]:
    """The arguments of the README's first ``manage.py <name>`` example."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"manage\.py {name} (.*?)(?:#|\n\n|```)", text, flags=re.DOTALL)
    assert found, f"no {name} example in the README"
    return shlex.split(found.group(1).replace("\\\n", " "))


def test_the_readme_example_leaves_the_tiers_to_the_models_that_answer(seeded_catalog):
    call_command("register_model", *readme_command("register_model"), stdout=io.StringIO())
    assert LLMModel.objects.filter(name="llama3").exists()
    for tier in catalog.QUALITY_TIERS:
        assert route(quality=tier).first.name == f"demo/{tier}"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_registered_server_that_is_down_is_named_in_the_error(fresh_catalog):
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    await sync_to_async(call_command)(
        "register_model", "llama3", "--base-url", base_url, stdout=io.StringIO()
    )
    tenant = await sync_to_async(make_tenant)(credits=100)
    generation = await start_generation(
        GenerationRequest(
            tenant=tenant, messages=[{"role": "user", "content": "hi"}], model="llama3"
        )
    )
    *_, last = [event async for event in generation.events()]
    assert isinstance(last, ErrorEvent)
    assert last.error.code == "LLM_CONNECTION_ERROR"
    assert "'llama3'" in last.error.message and base_url in last.error.message


def test_unregister_model_disables_then_removes(seeded_catalog):
    call_command("register_model", *readme_command("register_model"), "--tier", "cheap",
                 "--priority", "1", stdout=io.StringIO())  # fmt: skip
    assert route(quality="cheap").first.name == "llama3"

    call_command("unregister_model", "llama3", "--disable", stdout=io.StringIO())
    assert route(quality="cheap").first.name == "demo/cheap"
    assert not LLMModel.objects.get(name="llama3").is_active

    call_command("unregister_model", "llama3", stdout=io.StringIO())
    assert not LLMModel.objects.filter(name="llama3").exists()


@pytest.mark.parametrize("name", ["no-such-model", "demo/cheap"])
def test_unregister_model_refuses_unknown_and_demo_models(name):
    with pytest.raises(CommandError, match=repr(name)):
        call_command("unregister_model", name, stdout=io.StringIO())
    assert LLMModel.objects.filter(name="demo/cheap").exists()
