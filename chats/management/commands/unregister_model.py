from django.core.management.base import BaseCommand, CommandError

from chats.models import LLMModel
from chats.providers import provider_kind


class Command(BaseCommand):
    help = (
        "Remove a model from the catalog (or, with --disable, keep it but route nothing to "
        "it). Its tier then falls back to the next configured model, the demo model last."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The model's catalog name, e.g. llama3.")
        parser.add_argument(
            "--disable", action="store_true", help="Deactivate instead of deleting."
        )

    def handle(self, *args, name, disable, **options):
        model = LLMModel.objects.filter(name=name).first()
        if model is None:
            known = ", ".join(LLMModel.objects.order_by("name").values_list("name", flat=True))
            raise CommandError(f"No model {name!r} in the catalog. Known: {known}.")
        kind = provider_kind(model.provider)
        if kind is not None and kind.offline:
            raise CommandError(
                f"{name!r} is an offline demo model, what every tier falls back to: keep it."
            )
        if disable:
            model.is_active = False
            model.save(update_fields=["is_active"])
            self.stdout.write(f"Disabled model {name!r} (re-enable it in the admin).")
        else:
            model.delete()
            self.stdout.write(f"Removed model {name!r}.")
