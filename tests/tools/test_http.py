"""Tenant HTTP tools: which addresses they may call, and the signature of a call."""

import asyncio
import hashlib
import hmac

import pytest

from chats.tool_loop import ToolError
from tests.factories import make_tenant
from tools.http import is_public, public_destination, signature
from tools.models import HttpTool
from tools.registry import toolbox_for


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
        ("172.16.5.5", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_only_public_addresses_are_called(address, public):
    assert is_public(address) is public


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["http://localhost:9/hook", "http://127.0.0.1/x", "https://[::1]/"])
async def test_a_url_naming_a_local_host_is_refused(url):
    with pytest.raises(ToolError, match="not a public address"):
        await public_destination(url)


@pytest.mark.asyncio
async def test_a_public_host_is_called_at_the_checked_address_keeping_its_name_for_tls():
    url, extensions = await public_destination("https://8.8.8.8:8443/hook?x=1")
    assert url == "https://8.8.8.8:8443/hook?x=1"
    assert extensions == {"sni_hostname": "8.8.8.8"}


def test_the_signature_is_an_hmac_of_the_time_and_the_body():
    body = b'{"tool":"t"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret", 1700000000, body) == f"t=1700000000,v1={expected}"


@pytest.mark.django_db
def test_exclude_tools_names_only_what_it_removed_and_client_tools_win(settings):
    settings.MODEL_CATALOG_TTL_SECONDS = 0
    from chats.providers import ToolSpec

    tenant = make_tenant()
    for name in ("lookup", "notify"):
        HttpTool.objects.create(tenant=tenant, name=name, url="https://hooks.example.com/x")
    toolbox = toolbox_for(
        tenant=tenant,
        project_id="docs",
        client_tools=(ToolSpec("notify"), ToolSpec("draw")),
        exclude=["lookup", "draw", "create_scheduled_actions"],
    )
    assert sorted(toolbox.server_tools) == ["search_knowledge"]
    assert [spec.name for spec in toolbox.client_tools] == ["notify"]
    assert toolbox.excluded == ["draw", "lookup"]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_requests_finding_a_tenants_tools_stale_wait_on_one_read(settings, monkeypatch):
    from asgiref.sync import sync_to_async

    from tools import registry

    settings.MODEL_CATALOG_TTL_SECONDS = 10
    tenant = await sync_to_async(make_tenant)()
    await sync_to_async(HttpTool.objects.create)(
        tenant=tenant, name="lookup", url="https://hooks.example.com/x"
    )
    reads = []
    read = registry._read_http_tools
    monkeypatch.setattr(registry, "_read_http_tools", lambda t: reads.append(t.pk) or read(t))
    toolboxes = await asyncio.gather(*(registry.request_toolbox(tenant=tenant) for _ in range(10)))
    assert reads == [tenant.pk]
    assert all(list(toolbox.server_tools) == ["lookup"] for toolbox in toolboxes)
