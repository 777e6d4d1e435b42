from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Tenants and billing"

    def ready(self) -> None:
        from billing import key_cache, schema  # noqa: F401  (schema: the OpenAPI auth extension)

        key_cache.connect_signals()
