from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from chats.models import LLMModel, validate_base_url


def _decimal(value: str, name: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"--{name} must be a number, not {value!r}.") from None
    if number < 0:
        raise CommandError(f"--{name} cannot be negative.")
    return number


class Command(BaseCommand):
    help = (
        "Register (or update) a model served by an OpenAI-compatible server: OpenAI, "
        "Mistral, vLLM, Ollama, llama.cpp. The credential is named by an environment "
        "variable, never stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The name clients ask for, e.g. llama-3-8b.")
        parser.add_argument("--base-url", required=True, help="e.g. http://localhost:11434/v1")
        parser.add_argument("--upstream-model", help="The server's model id (default: name).")
        parser.add_argument("--api-key-env", default="", help="Env var holding the key.")
        parser.add_argument("--tier", choices=[t.value for t in LLMModel.Tier], default="")
        parser.add_argument("--priority", type=int, default=10, help="Lower wins in a tier.")
        parser.add_argument("--context-window", type=int, default=8192)
        parser.add_argument("--max-output-tokens", type=int, default=1024)
        parser.add_argument("--input-price", default="0", help="Credits per 1K input tokens.")
        parser.add_argument("--output-price", default="0", help="Credits per 1K output tokens.")

    def handle(self, *args, **options):
        try:
            validate_base_url(options["base_url"])
        except ValidationError as error:
            raise CommandError(f"--base-url: {error.messages[0]}") from None
        model, created = LLMModel.objects.update_or_create(
            name=options["name"],
            defaults={
                "provider": "openai_compatible",
                "upstream_model": options["upstream_model"] or options["name"],
                "base_url": options["base_url"].rstrip("/"),
                "api_key_env": options["api_key_env"],
                "tier": options["tier"],
                "priority": options["priority"],
                "context_window": options["context_window"],
                "max_output_tokens": options["max_output_tokens"],
                "input_price_per_1k": _decimal(options["input_price"], "input-price"),
                "output_price_per_1k": _decimal(options["output_price"], "output-price"),
                "is_active": True,
            },
        )
        self.stdout.write(f"{'Registered' if created else 'Updated'} model {model.name!r}.")
