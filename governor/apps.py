from django.apps import AppConfig


class GovernorConfig(AppConfig):
    name = "governor"
    verbose_name = "Compliance governor"
