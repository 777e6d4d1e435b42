import io

import pytest
from django.core.management import CommandError, call_command

from chats.models import LLMModel

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
