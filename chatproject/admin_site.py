"""The staff admin: Django's, named for the product, with an overview as its index."""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig

PRODUCT = "AI chat backend"


class ChatAdminSite(admin.AdminSite):
    site_header = PRODUCT
    site_title = f"{PRODUCT} admin"
    index_title = "Overview"
    index_template = "admin/overview.html"
    # The overview lists every model; the wide audit and usage lists get the width.
    enable_nav_sidebar = False

    def index(self, request, extra_context=None):
        # Imported here: this module is loaded with the settings, before any model.
        from chatproject.overview import overview

        context = {"overview": overview(), **(extra_context or {})}
        return super().index(request, extra_context=context)


class ChatAdminConfig(AdminConfig):
    default_site = "chatproject.admin_site.ChatAdminSite"

    def ready(self) -> None:
        super().ready()
        from chatproject import checks  # noqa: F401 (registers the middleware checks)
