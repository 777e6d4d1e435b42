from django.urls import re_path

from governor.api import GovernorValidateView

urlpatterns = [
    re_path(r"^api/governor/validate/?$", GovernorValidateView.as_view(), name="governor-validate"),
]
