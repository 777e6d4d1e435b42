"""The request path's Redis client: one connection per event loop, shared by every
coroutine. Commands issued in the same turn of the loop go out in one write, and their
replies are matched to them in order (Redis answers a connection's commands in the order
it read them), so concurrent requests pipeline without asking to.

It exists for speed. redis-py's asyncio client spends about half a million instructions a
round trip (a pooled connection checked out and back, a retry wrapper, deprecation and
observability hooks, one parse per reply), and a streaming request makes a dozen; here a
command costs a tenth of that. What it does not do stays with redis-py
(:func:`chatproject.redis.get_redis`): blocking reads, which would hold every other
command up behind them, pub/sub, and everything off the request path.

Failures are redis-py's exceptions, so callers handle both clients alike: a connection
that cannot be made or is lost is a :class:`redis.ConnectionError` (its commands in
flight fail with it, and the next command connects again), an error reply a
:class:`redis.ResponseError`. Like the pooled client's, a command that meets a broken
connection is tried again, twice, quickly, on a new one, so a Redis restart between two
requests goes unnoticed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import weakref
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from django.conf import settings
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import NoScriptError

CONNECT_TIMEOUT_SECONDS = 5
RETRY_DELAYS = (0.05, 0.1)  # before the second and third attempts on a broken connection

Command = Sequence[Any]  # a command's name and arguments: str, bytes, int or float


class Script:
    """A Lua script, run by its SHA-1 (loaded the first time Redis does not know it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class _Protocol(asyncio.Protocol):
    """One connection: what was written and awaits its reply, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.outgoing: list[bytes] = []
        self._flush_due = False
        self.lost: Exception | None = None
        self._reader = hiredis.Reader(replyError=redis.ResponseError)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self.waiting
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            future = waiting.popleft()
            if not future.done():  # its caller may have been cancelled meanwhile
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = redis.ConnectionError(f"Connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future]:
        """Queue ``commands``; they are written together with whatever else the loop's
        other tasks queue before it next turns."""
        if self.lost is not None:
            raise self.lost
        loop = asyncio.get_running_loop()
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self.flush)
        futures = []
        for command in commands:
            self.outgoing.append(hiredis.pack_command(tuple(command)))
            future = loop.create_future()
            self.waiting.append(future)
            futures.append(future)
        return futures

    def flush(self) -> None:
        """Write what is queued."""
        self._flush_due = False
        if not self.outgoing:
            return
        data, self.outgoing = b"".join(self.outgoing), []
        if self.lost is None and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class MultiplexedRedis:
    """The client of one event loop (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._connection: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, *command: Any) -> Any:
        """One command's reply; an error reply is raised."""
        return _raised((await self._send([command]))[0])

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands' replies, in one write; the first error reply is raised once
        every command has been answered (as redis-py's pipelines do)."""
        replies = await self._send(commands)
        for reply in replies:
            _raised(reply)
        return replies

    async def run_script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis: EVAL loads it again
            return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        for delay in (*RETRY_DELAYS, None):
            try:
                connection = await self._connected()
                return await _replies(connection.send(commands))
            except redis.ConnectionError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _connected(self) -> _Protocol:
        connection = self._connection
        if connection is not None and connection.lost is None:
            return connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        try:
            if options.get("connection_class") is UnixDomainSocketConnection:
                connecting = loop.create_unix_connection(_Protocol, options["path"])
            else:
                connecting = loop.create_connection(
                    _Protocol,
                    options.get("host", "localhost"),
                    options.get("port", 6379),
                    ssl=_ssl_context(options),
                )
            _, connection = await asyncio.wait_for(connecting, CONNECT_TIMEOUT_SECONDS)
        except (TimeoutError, OSError) as error:
            raise redis.ConnectionError(f"Cannot connect to Redis: {error}") from error
        hello: list[Command] = []
        if options.get("password"):
            user = [options["username"]] if options.get("username") else []
            hello.append(("AUTH", *user, options["password"]))
        if options.get("db"):
            hello.append(("SELECT", options["db"]))
        try:
            for reply in await _replies(connection.send(hello)):
                _raised(reply)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


async def _replies(futures: list[asyncio.Future]) -> list[Any]:
    try:
        return [await future for future in futures]
    except BaseException:
        for future in futures:  # a lost connection failed them all: one error is enough
            if future.done() and not future.cancelled():
                future.exception()
        raise


def _raised(reply: Any) -> Any:
    if isinstance(reply, redis.ResponseError):
        if str(reply).startswith("NOSCRIPT"):
            raise NoScriptError(str(reply))
        raise reply
    return reply


def _ssl_context(options: dict) -> ssl.SSLContext | None:
    if options.get("connection_class") is not SSLConnection:
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, MultiplexedRedis]] = (
    weakref.WeakKeyDictionary()
)


def send_queued() -> None:
    """Write the running loop's queued commands now, not when the loop next turns: for a
    caller about to spend CPU while their replies come (the loop would write them after)."""
    entry = _clients.get(asyncio.get_running_loop())
    connection = entry[1]._connection if entry is not None else None
    if connection is not None:
        connection.flush()


def get_multiplexed() -> MultiplexedRedis:
    """The running loop's client; only call when ``settings.REDIS_URL`` is set."""
    loop = asyncio.get_running_loop()
    entry = _clients.get(loop)
    if entry is None or entry[0] != settings.REDIS_URL:  # tests point it elsewhere
        if entry is not None:
            entry[1].close()
        entry = _clients[loop] = (settings.REDIS_URL, MultiplexedRedis(settings.REDIS_URL))
    return entry[1]
