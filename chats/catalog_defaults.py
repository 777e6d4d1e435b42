"""The model catalog every installation starts with: RegPilot's models and tiers, and the
offline demo models that stand in for each tier when no provider is configured.

Prices are credits per 1K tokens.
"""

OPENAI = {"provider": "openai", "api_key_env": "OPENAI_API_KEY"}
ANTHROPIC = {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}
MISTRAL = {
    "provider": "mistral",
    "api_key_env": "MISTRAL_API_KEY",
    "base_url": "https://api.mistral.ai/v1",
}

DEFAULT_MODELS = [
    # name, tier, context window, input price, output price, provider settings
    ("claude-3-haiku-20240307", "cheap", 200000, "0.25", "1.25", ANTHROPIC),
    ("gpt-4o-mini", "balanced", 128000, "0.15", "0.60", OPENAI),
    ("gpt-4o", "frontier", 128000, "2.50", "10.00", OPENAI),
    ("gpt-4-turbo", "", 128000, "10.00", "30.00", OPENAI),
    ("claude-3-opus-20240229", "", 200000, "15.00", "75.00", ANTHROPIC),
    ("claude-3-sonnet-20240229", "", 200000, "3.00", "15.00", ANTHROPIC),
    ("mistral-large-latest", "", 128000, "2.00", "6.00", MISTRAL),
    ("mistral-medium-latest", "", 128000, "0.40", "2.00", MISTRAL),
    # Demo models: last in their tier, so any configured provider is preferred.
    ("demo/cheap", "cheap", 16000, "0.25", "1.25", {"provider": "demo"}),
    ("demo/balanced", "balanced", 16000, "0.15", "0.60", {"provider": "demo"}),
    ("demo/frontier", "frontier", 16000, "2.50", "10.00", {"provider": "demo"}),
]


def create_default_models(model_class) -> None:
    """Create the default catalog entries that are missing (migrations pass theirs)."""
    for name, tier, context, input_price, output_price, provider in DEFAULT_MODELS:
        model_class.objects.get_or_create(
            name=name,
            defaults={
                "upstream_model": name.removeprefix("demo/"),
                "tier": tier,
                "priority": 1000 if provider["provider"] == "demo" else 10,
                "context_window": context,
                "input_price_per_1k": input_price,
                "output_price_per_1k": output_price,
                **provider,
            },
        )
