"""Staff edit tenants' HTTP tools in the admin."""

import pytest
from django.urls import reverse

from tests.factories import make_tenant
from tools.models import HttpTool

pytestmark = pytest.mark.django_db


def form(tenant, **fields) -> dict:
    return {
        "tenant": tenant.pk,
        "name": "lookup_order",
        "description": "Finds an order.",
        "parameters": '{"type": "object", "properties": {"order": {"type": "string"}}}',
        "url": "https://hooks.example.com/orders",
        "timeout_seconds": "5",
        "is_active": "on",
        **fields,
    }


def test_a_tool_is_added_with_a_signing_secret(admin_client):
    tenant = make_tenant()
    response = admin_client.post(reverse("admin:tools_httptool_add"), form(tenant))
    assert response.status_code == 302, response.content
    tool = HttpTool.objects.get(tenant=tenant)
    assert tool.parameters["properties"]["order"] == {"type": "string"}
    assert tool.signing_secret.startswith("whsec_")
    page = admin_client.get(reverse("admin:tools_httptool_change", args=[tool.pk]))
    assert tool.signing_secret in page.content.decode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "search_knowledge"),
        ("name", "has spaces"),
        ("parameters", '{"type": "string"}'),
        ("url", "ftp://hooks.example.com"),
        ("timeout_seconds", "60"),
    ],
)
def test_bad_tools_are_refused_by_the_form(admin_client, field, value):
    tenant = make_tenant()
    response = admin_client.post(
        reverse("admin:tools_httptool_add"), form(tenant, **{field: value})
    )
    assert response.status_code == 200  # the form again, with the error
    assert field in response.context["adminform"].form.errors
    assert not HttpTool.objects.exists()
