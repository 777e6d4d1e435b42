"""Pooled HTTP clients, one set per event loop: an aiohttp session for the providers'
upstream streams, and httpx clients for tenants' HTTP tools.

The providers stream through aiohttp because a request's client work is most of what
relaying an answer costs: measured streaming 5 tokens from the fake upstream
(``bench/upstream_client.py``), httpx spends about 2 ms of CPU a request and 12 µs a
token, aiohttp 0.3 ms and 5 µs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import ssl
from collections.abc import Iterator

import aiohttp
import httpx

# httpx clients are bound to the event loop they first ran in, and a process may run several
# loops (daphne's, a test's, asgiref's), so the clients are kept per loop.
#
# httpcore's pool walks all its connections (idle ones twice over, with a poll() syscall
# each) whenever a request starts or ends, so one big pool collapses under a few hundred
# concurrent streams (measured: ~3x fewer streams/s at 200 concurrent than the scheme below).
# So each loop keeps a small set of clients and fills them in order, at most
# _STREAMS_PER_CLIENT streams each: a quiet server uses (and keeps warm) the first client
# only, a busy one spreads over several small pools. They share one SSLContext.
_STREAMS_PER_CLIENT = 8
_MAX_CLIENTS = 128
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=16, keepalive_expiry=30)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


class _LoopClients:
    """The pooled clients of one event loop and how many streams each is serving."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.active: list[int] = []

    def pick(self) -> int:
        for index, count in enumerate(self.active):
            if count < _STREAMS_PER_CLIENT and not self.clients[index].is_closed:
                return index
        if len(self.clients) < _MAX_CLIENTS:
            self.clients.append(
                httpx.AsyncClient(verify=_ssl_context(), limits=_LIMITS, follow_redirects=False)
            )
            self.active.append(0)
            return len(self.clients) - 1
        return min(range(len(self.active)), key=self.active.__getitem__)


_LOOP_CLIENTS: dict[asyncio.AbstractEventLoop, _LoopClients] = {}


@contextlib.contextmanager
def leased_client() -> Iterator[httpx.AsyncClient]:
    """A pooled AsyncClient of the running loop, held for the length of one stream."""
    loop = asyncio.get_running_loop()
    clients = _LOOP_CLIENTS.get(loop)
    if clients is None:
        for stale in [other for other in _LOOP_CLIENTS if other.is_closed()]:
            del _LOOP_CLIENTS[stale]  # its sockets died with its loop; nothing left to close
        clients = _LOOP_CLIENTS[loop] = _LoopClients()
    index = clients.pick()
    clients.active[index] += 1
    try:
        yield clients.clients[index]
    finally:
        clients.active[index] -= 1


def client_lease(
    client: httpx.AsyncClient | None,
) -> contextlib.AbstractContextManager[httpx.AsyncClient]:
    """`client` when one was injected, else a leased pooled client."""
    return contextlib.nullcontext(client) if client is not None else leased_client()


_SESSIONS: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def upstream_session() -> aiohttp.ClientSession:
    """The running loop's aiohttp session: one connection pool for every upstream."""
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        _drop_dead_sessions()
        connector = aiohttp.TCPConnector(
            limit=1000, limit_per_host=0, keepalive_timeout=30, ssl=_ssl_context()
        )
        # No cookies kept between tenants' requests, no environment proxies read per call.
        session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
        )
        _SESSIONS[loop] = session
    return session


def _drop_dead_sessions() -> None:
    """Forget the sessions of loops that have closed (a process with one server loop has
    none; tests run many loops), closing their sockets as aiohttp's own finaliser would,
    without its warning: there is no loop left to close them on."""
    for loop in [loop for loop in _SESSIONS if loop.is_closed()]:
        session = _SESSIONS.pop(loop)
        connector = session.connector
        session.detach()  # the session is done with; its connector is closed here
        if connector is not None:
            connector._close()


atexit.register(_drop_dead_sessions)


async def aclose_shared_client() -> None:
    """Closes the running loop's pooled clients (at shutdown, and in tests)."""
    loop = asyncio.get_running_loop()
    clients = _LOOP_CLIENTS.pop(loop, None)
    for client in clients.clients if clients else ():
        await client.aclose()
    session = _SESSIONS.pop(loop, None)
    if session is not None:
        await session.close()
