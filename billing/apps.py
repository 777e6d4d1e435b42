from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Tenants and billing"

    def ready(self) -> None:
        from billing import schema  # noqa: F401  (registers the OpenAPI auth extension)
