from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chatproject import health
from chatproject.metrics import metrics_view

# The API description is public; the endpoints it describes are not.
PUBLIC: dict[str, list] = {"authentication_classes": [], "permission_classes": []}

urlpatterns = [
    # The streaming formats first: every answer's request resolves its URL twice (the ASGI
    # handler, then Django), and each pattern tried before the match costs.
    path("", include("chats.transports.urls")),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(**PUBLIC), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", **PUBLIC), name="docs"),
    path("", include("governor.urls")),
    path("", include("chats.urls")),
    path("", include("knowledge.urls")),
    path("", include("playground.urls")),
]

handler400 = "chatproject.api_paths.handler400"
handler403 = "chatproject.api_paths.handler403"
handler404 = "chatproject.api_paths.handler404"
handler500 = "chatproject.api_paths.handler500"
