"""Which tools a request offers the model: the client's own, the server's built-in
``search_knowledge`` (with a project), the tenant's HTTP tools; less ``excludeTools``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings

from billing.models import Tenant
from chatproject.db import db_call
from chatproject.shared_reads import SharedReads
from chats.providers import ToolSpec
from chats.tool_loop import ServerTool
from tools.http import HttpServerTool
from tools.knowledge import SearchKnowledgeTool
from tools.models import HttpTool


@dataclass(frozen=True)
class Toolbox:
    client_tools: tuple[ToolSpec, ...] = ()
    server_tools: dict[str, ServerTool] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)  # the names excludeTools took away


# A tenant's HTTP tools per process, like the model catalog: admin edits reach every
# process within MODEL_CATALOG_TTL_SECONDS, and most requests read no database for them.
_tenant_tools: dict[int, tuple[float, list[HttpServerTool]]] = {}
_reads: SharedReads[list[HttpServerTool]] = SharedReads()  # by tenant


def _cached_http_tools(tenant: Tenant) -> list[HttpServerTool] | None:
    cached = _tenant_tools.get(tenant.pk)
    if cached is None or time.monotonic() - cached[0] > settings.MODEL_CATALOG_TTL_SECONDS:
        return None
    return cached[1]


def http_tools(tenant: Tenant) -> list[HttpServerTool]:
    """The tenant's active HTTP tools. Sync (database, unless cached)."""
    cached = _cached_http_tools(tenant)
    return cached if cached is not None else _read_http_tools(tenant)


def _read_http_tools(tenant: Tenant) -> list[HttpServerTool]:
    read_at = time.monotonic()
    tools = [
        HttpServerTool(
            spec=ToolSpec(tool.name, tool.description, tool.parameters or {"type": "object"}),
            url=tool.url,
            timeout=tool.timeout_seconds,
            signing_secret=tool.signing_secret,
        )
        for tool in HttpTool.objects.filter(tenant=tenant, is_active=True)
    ]
    _tenant_tools[tenant.pk] = (read_at, tools)
    return tools


async def request_toolbox(**options) -> Toolbox:
    """:func:`toolbox_for` from async code: the database only when the cache is stale."""
    return toolbox_for(**options, http=await _http_tools_async(options["tenant"]))


async def _http_tools_async(tenant: Tenant) -> list[HttpServerTool]:
    """One read for the requests that find the copy stale, and started ahead of that under
    steady use (:mod:`chatproject.shared_reads`)."""
    life = settings.MODEL_CATALOG_TTL_SECONDS
    return await _reads.latest(
        tenant.pk, _tenant_tools.get(tenant.pk), life, lambda: db_call(_read_http_tools, tenant)
    )


def toolbox_for(
    *,
    tenant: Tenant,
    project_id: str | None = None,
    client_tools: tuple[ToolSpec, ...] = (),
    exclude: Iterable[str] = (),
    http: list[HttpServerTool] | None = None,
) -> Toolbox:
    """The request's tools. Sync (database, unless cached or ``http``, the tenant's HTTP
    tools, is given). A name in ``exclude`` that is not offered is ignored; a client tool
    with a server tool's name is the client's (it asked for it)."""
    server: dict[str, ServerTool] = {}
    if project_id:
        server["search_knowledge"] = SearchKnowledgeTool(tenant=tenant, project_id=project_id)
    for tool in http if http is not None else http_tools(tenant):
        server[tool.spec.name] = tool
    for spec in client_tools:
        server.pop(spec.name, None)
    unwanted = set(exclude)
    offered = [spec.name for spec in client_tools] + list(server)
    return Toolbox(
        client_tools=tuple(spec for spec in client_tools if spec.name not in unwanted),
        server_tools={name: tool for name, tool in server.items() if name not in unwanted},
        excluded=[name for name in offered if name in unwanted],
    )
