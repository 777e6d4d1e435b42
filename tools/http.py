"""Calling a tenant's HTTP tool: a signed POST to a public address, a JSON answer back.

The request body is ``{"tool", "call_id", "arguments"}``; ``X-Tool-Signature:
t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>`` under the tool's signing secret
lets the tenant check that the call comes from this service (and is fresh). The answer
must be 2xx with a JSON body, which is handed to the model as the result; anything else
(a time-out, another status, a body that is not JSON, one over ``MAX_ANSWER_BYTES``) is a
ToolError the model is told.

Unless ``TOOLS_ALLOW_PRIVATE_URLS`` is on, the host must resolve to public addresses
only (no loopback, private, link-local, shared or reserved ones), and the connection goes
to the address that was checked, so a name that re-resolves elsewhere cannot redirect it.
Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings

from chats.providers import ToolSpec
from chats.providers.http_client import leased_client
from chats.tool_loop import ToolError

SIGNATURE_HEADER = "X-Tool-Signature"
MAX_ANSWER_BYTES = 1 << 20


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Tool-Signature`` value of a call."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def public_destination(url: str) -> tuple[str, dict[str, Any]]:
    """The URL to connect to (the host replaced by its checked address) and the request
    extensions that keep TLS on the original name; raises ToolError for a private one."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise ToolError(f"The tool's host {host!r} could not be resolved.") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(is_public(address) for address in addresses):
        raise ToolError(
            "The tool's URL is not a public address (loopback, private and link-local "
            "addresses are not called)."
        )
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc += f":{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return urlunsplit(parts._replace(netloc=netloc)), extensions


@dataclass(frozen=True)
class HttpServerTool:
    """One tenant tool, as the tool loop runs it."""

    spec: ToolSpec
    url: str
    timeout: float
    signing_secret: str

    async def run(self, arguments: dict[str, Any], *, call_id: str) -> str:
        body = json.dumps(
            {"tool": self.spec.name, "call_id": call_id, "arguments": arguments},
            separators=(",", ":"),
        ).encode()
        host = urlsplit(self.url).netloc
        headers = {
            "content-type": "application/json",
            "host": host,
            "user-agent": "chat-backend-tools/1",
            "x-tool-call-id": call_id,
            SIGNATURE_HEADER: signature(self.signing_secret, int(time.time()), body),
        }
        try:
            async with asyncio.timeout(self.timeout):
                url, extensions = self.url, dict[str, Any]()
                if not settings.TOOLS_ALLOW_PRIVATE_URLS:
                    url, extensions = await public_destination(self.url)
                status, raw = await self._post(url, body, headers, extensions)
        except TimeoutError:
            raise ToolError(f"The tool did not answer within {self.timeout:g} s.") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"The tool could not be reached ({type(exc).__name__}).") from None
        if not 200 <= status < 300:
            raise ToolError(f"The tool answered HTTP {status}.")
        try:
            value = json.loads(raw)
        except ValueError:
            raise ToolError("The tool's answer is not valid JSON.") from None
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], extensions: dict[str, Any]
    ) -> tuple[int, bytes]:
        with leased_client() as client:
            request = client.build_request(
                "POST",
                url,
                content=body,
                headers=headers,
                extensions=extensions,
                timeout=httpx.Timeout(self.timeout),
            )
            response = await client.send(request, stream=True)
            try:
                raw = b""
                async for piece in response.aiter_bytes():
                    raw += piece
                    if len(raw) > MAX_ANSWER_BYTES:
                        raise ToolError(f"The tool's answer is over {MAX_ANSWER_BYTES} bytes.")
                return response.status_code, raw
            finally:
                await response.aclose()
