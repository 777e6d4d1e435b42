"""Fake LLM upstreams over real HTTP: OpenAI Chat Completions and Anthropic Messages.

A small asyncio HTTP/1.1 server (keep-alive, chunked streaming, TCP_NODELAY, each token
flushed as soon as it is produced) that speaks the providers' exact wire formats:

- ``POST /v1/chat/completions``: OpenAI streaming SSE (``chat.completion.chunk`` objects, a
  usage chunk with empty ``choices`` when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``) or, with ``stream`` false, one ``chat.completion`` JSON object.
- ``POST /v1/messages``: Anthropic named events ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta``, ``content_block_stop``, ``message_delta`` (cumulative
  usage), ``message_stop``; or one ``message`` JSON object when not streaming.
- ``GET /v1/models``: an OpenAI model list.

Every request is recorded: ``up.requests`` holds the JSON bodies (dicts) in arrival order,
``up.received`` the method, path, headers and body of each.

Behaviour is a string of ``+``-separated parts, set per server (``FakeUpstream("tokens-20")``)
and overridable per request through the model name (``model="fail-after-3"``,
``model="tokens-50+delay-10"``); parts the grammar does not know (``gpt-4o``) are ignored:

=================  ==========================================================================
``tokens-N``       reply with N tokens (default 5): see `expected_text`
``delay-MS``       sleep MS milliseconds before each token
``fail-after-N``   send N tokens then drop the connection mid-body (also ``drop-after-N``)
``eof-after-N``    send N tokens then end the body cleanly, without [DONE]/message_stop
``drop``           close the connection without answering at all
``status-NNN``     answer HTTP NNN with the provider's error JSON (429 also gets retry-after)
``hang``           never answer (until the client goes away or the server stops)
``hang-after-N``   send N tokens then stall forever
``error-after-N``  send N tokens then a mid-stream error (Anthropic ``event: error`` with
                   ``overloaded_error``; OpenAI ``data: {"error": {...}}``), then end the body
``no-usage``       OpenAI: never send the usage chunk
``calls-N``        when the request offers tools: call N of them (default 2, the offered tools
                   in turn), see `tool_arguments`; arguments streamed in pieces
``mistral``        OpenAI endpoint: refuse tool call ids that are not 9 letters or digits, as
                   Mistral does
=================  ==========================================================================

Tools: a request that offers tools and does not end with tool results is answered with
tool calls (OpenAI ``delta.tool_calls`` pieces under each call's ``index``, finish
``tool_calls``; Anthropic ``tool_use`` blocks with ``input_json_delta`` pieces, stop_reason
``tool_use``), a text block first on Anthropic. A request ending with tool results is
answered with `tool_answer` of them. Like the real APIs, a tool result that answers no
earlier tool call of the conversation is refused with 400 (Anthropic also wants
``tools`` defined when the conversation holds tool blocks).

Replies are `expected_text(N)`, cut at the request's ``max_tokens`` (finish "length" /
stop_reason "max_tokens"); reported usage is ``prompt_tokens_for(body)`` (the words of the
prompt) and the number of tokens. Like the real APIs, the Anthropic endpoint answers 400
without an ``anthropic-version`` header, without ``max_tokens``, or with a ``system`` role
inside ``messages``.

Sync code (a thread with its own loop; works with any test's event loop)::

    with FakeUpstream.running("tokens-3") as up:
        httpx.post(up.openai_base_url + "/chat/completions", json=...)

Async code (on the running loop)::

    async with FakeUpstream() as up:
        ...

Another process (benchmarks: no shared GIL)::

    python -m tests.fakes.upstream --port 8100 --behaviour tokens-50 [--no-record]

prints its base URL, and answers ``GET /_fake/requests`` with the recorded bodies
(``DELETE`` clears them).

`fake_upstream` is a pytest fixture (thread-based) other test modules can import.
If `api_key` is given, requests without it get the provider's 401, whose message quotes the
key that was sent (as a careless upstream might) to prove that callers redact it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

WORDS = ("Hello", "from", "the", "fake", "upstream", "model", "streaming", "tokens")


def token_text(index: int) -> str:
    """The `index`-th token of every fake reply (leading space on all but the first)."""
    word = WORDS[index % len(WORDS)]
    return word if index == 0 else f" {word}"


def expected_text(tokens: int) -> str:
    """The full text of a fake reply of `tokens` tokens."""
    return "".join(token_text(i) for i in range(tokens))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts / content blocks
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


ANTHROPIC_PREAMBLE = "Let me call the tools."


def tool_arguments(index: int) -> dict[str, Any]:
    """The arguments of the fake's `index`-th tool call of an answer."""
    return {"city": f"City {index}", "units": "metric", "days": index + 1}


def tool_answer(results: list[str]) -> str:
    """The fake's reply to a conversation ending with these tool results."""
    return "Tool results: " + " | ".join(results)


def _pieces(text: str, size: int = 5) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def _offered_tools(body: dict[str, Any], anthropic: bool) -> list[str]:
    names = []
    for tool in body.get("tools") or ():
        name = tool.get("name") if anthropic else (tool.get("function") or {}).get("name")
        if isinstance(name, str):
            names.append(name)
    return names


def _openai_tool_results(messages: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """(the tool results the conversation ends with, a problem OpenAI would refuse)."""
    called: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or ():
            called.add(call.get("id"))
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return [], f"tool_call_id {message.get('tool_call_id')!r} answers no tool call"
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(_content_text(message.get("content")))
    return results[::-1], None


def _anthropic_tool_results(body: dict[str, Any]) -> tuple[list[str], str | None]:
    called: set[str] = set()
    blocks_seen = False
    for message in body["messages"]:
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        kinds = [block.get("type") for block in blocks]
        if "tool_result" in kinds:
            blocks_seen = True
            if kinds.index("tool_result") != 0 or kinds[: kinds.count("tool_result")] != [
                "tool_result"
            ] * kinds.count("tool_result"):
                return [], "tool_result blocks must come first in the user content"
        for block in blocks:
            if block.get("type") == "tool_use":
                blocks_seen = True
                called.add(block.get("id"))
                if not isinstance(block.get("input"), dict):
                    return [], "tool_use.input: Input should be a valid dictionary"
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in called:
                return (
                    [],
                    "unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}",
                )
    if blocks_seen and not body.get("tools"):
        return [], "Requests which include `tool_use` or `tool_result` blocks must define tools."
    last = body["messages"][-1] if body["messages"] else {}
    content = last.get("content") if last.get("role") == "user" else None
    results = [
        _content_text(block.get("content"))
        for block in (content if isinstance(content, list) else [])
        if block.get("type") == "tool_result"
    ]
    return results, None


def prompt_tokens_for(body: dict[str, Any]) -> int:
    """The prompt usage the fake reports for a request body: its whitespace-separated words."""
    texts = [_content_text(m.get("content")) for m in body.get("messages") or []]
    texts.append(_content_text(body.get("system")))
    return max(1, sum(len(text.split()) for text in texts))


@dataclass(frozen=True)
class Behaviour:
    """What the fake does for one request."""

    tokens: int = 5
    delay: float = 0.0  # seconds before each token
    fail_after: int | None = None
    eof_after: int | None = None
    drop: bool = False
    status: int | None = None
    hang: bool = False
    hang_after: int | None = None
    error_after: int | None = None
    usage: bool = True
    calls: int = 2
    mistral: bool = False

    _PART = re.compile(
        r"^(tokens|delay|fail-after|drop-after|eof-after|status|hang-after|error-after|calls)"
        r"-(\d+)$"
    )

    def with_parts(self, spec: str | None) -> Behaviour:
        """This behaviour with the parts of `spec` (``"tokens-3+delay-5"``) applied."""
        changes: dict[str, Any] = {}
        for part in (spec or "").lower().split("+"):
            part = part.strip()
            if part in ("drop", "hang"):
                changes[part] = True
            elif part == "no-usage":
                changes["usage"] = False
            elif part == "mistral":
                changes["mistral"] = True
            elif match := self._PART.match(part):
                name, number = match.group(1), int(match.group(2))
                if name == "delay":
                    changes["delay"] = number / 1000
                elif name in ("fail-after", "drop-after"):
                    changes["fail_after"] = number
                else:
                    changes[name.replace("-", "_")] = number
        return replace(self, **changes) if changes else self

    def cut(self) -> tuple[int, str | None]:
        """(tokens to send before the scripted ending, that ending or None)."""
        endings = [
            (self.fail_after, "fail"),
            (self.eof_after, "eof"),
            (self.hang_after, "hang"),
            (self.error_after, "error"),
        ]
        scheduled = [(n, name) for n, name in endings if n is not None]
        if not scheduled:
            return self.tokens, None
        return min(scheduled)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


class _Drop(Exception):
    """Abort the connection without a proper end (simulates a dropped upstream)."""


class _Hang(Exception):
    """Stop answering; wait for the client to leave."""


@dataclass
class _Exchange:
    """One request and the writer to answer it on."""

    writer: asyncio.StreamWriter
    chunked: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def head(self, status: int, headers: dict[str, str], *, length: int | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if length is None:
            lines.append("transfer-encoding: chunked")
            self.chunked = True
        else:
            lines.append(f"content-length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        all_headers = {"content-type": "application/json", **(headers or {})}
        self.writer.write(self.head(status, all_headers, length=len(body)) + body)
        await self.writer.drain()

    async def start_stream(self, first: bytes = b"") -> None:
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        self.writer.write(self.head(200, headers) + (_chunk(first) if first else b""))
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        # write() hands the bytes to the socket at once (TCP_NODELAY: one segment a token);
        # drain() only matters when the client reads slower than we write.
        self.writer.write(_chunk(data))
        if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
            await self.writer.drain()
        elif self.writer.transport.is_closing():
            raise ConnectionResetError("client went away")

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


_HIGH_WATER = 64 * 1024


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: {key}."),
    403: ("invalid_request_error", None, "You are not allowed to sample from this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

_ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key: {key}"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "An unexpected error has occurred internal to Anthropic's systems."),
    529: ("overloaded_error", "Overloaded"),
}


_SLOT = "\x00"


class _Template:
    """An encoded event with one string slot, filled without re-encoding the rest."""

    def __init__(self, encoded: bytes) -> None:
        self.head, self.tail = encoded.split(json.dumps(_SLOT).encode(), 1)

    def fill(self, text: str) -> bytes:
        return self.head + json.dumps(text).encode() + self.tail


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {text}\n\n".encode()


class FakeUpstream:
    """A fake OpenAI-compatible and Anthropic upstream on 127.0.0.1 (see the module doc)."""

    def __init__(
        self,
        behaviour: str | Behaviour = "",
        *,
        tokens: int | None = None,
        token_delay: float | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
    ) -> None:
        base = behaviour if isinstance(behaviour, Behaviour) else Behaviour().with_parts(behaviour)
        if tokens is not None:
            base = replace(base, tokens=tokens)
        if token_delay is not None:
            base = replace(base, delay=token_delay)
        self.behaviour = base
        self.api_key = api_key
        self.record = record
        self.host = host
        self.port = port
        self.received: list[RecordedRequest] = []
        self.connections_opened = 0
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- addresses and records ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT`` (Anthropic's base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-style base URL: ``{base_url}/v1``."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON body of every request received, in order."""
        return [r.body for r in self.received if r.body is not None]

    def reset(self) -> None:
        self.received.clear()
        self.connections_opened = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> FakeUpstream:
        """Starts serving on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, limit=1 << 20, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stops serving and cuts every open connection (hanging ones included)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeUpstream:
        """Starts serving from a background thread with its own event loop."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop_thread(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    @classmethod
    @contextlib.contextmanager
    def running(cls, behaviour: str | Behaviour = "", **kwargs: Any) -> Iterator[FakeUpstream]:
        """``with FakeUpstream.running(...) as up:`` serves from a background thread."""
        upstream = cls(behaviour, **kwargs).start_in_thread()
        try:
            yield upstream
        finally:
            upstream.stop_thread()

    # --- HTTP ---------------------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_opened += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, version = request_line.split(" ", 2)
                headers: dict[str, str] = {}
                for line in header_lines:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                raw = await self._read_body(reader, headers)
                exchange = _Exchange(writer)
                try:
                    await self._dispatch(exchange, method, target.split("?")[0], headers, raw)
                except _Drop:
                    # A FIN, not a RST: tokens already sent must still reach the client.
                    return
                except _Hang:
                    while await reader.read(65536):
                        pass
                    return
                if version != "HTTP/1.1" or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # stop() cancels open connections; ending quietly keeps 3.11's
            # StreamReaderProtocol from logging the cancellation as an error.
            return
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    while data != b"\r\n":  # trailers
                        data = await reader.readuntil(b"\r\n")
                    return b"".join(parts)
                parts.append(data[:-2])
        length = int(headers.get("content-length") or 0)
        return await reader.readexactly(length) if length else b""

    async def _dispatch(
        self,
        exchange: _Exchange,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> None:
        body: dict[str, Any] | None = None
        if raw:
            try:
                parsed = json.loads(raw)
                body = parsed if isinstance(parsed, dict) else None
            except ValueError:
                body = None
        if path.startswith("/_fake/"):
            await self._control(exchange, method, path)
            return
        if self.record:
            self.received.append(RecordedRequest(method, path, headers, body))

        if method == "GET" and path == "/v1/models":
            await exchange.send_json(200, {"object": "list", "data": [_model("fake-model")]})
        elif method == "POST" and path == "/v1/chat/completions":
            await self._openai(exchange, headers, body)
        elif method == "POST" and path == "/v1/messages":
            await self._anthropic(exchange, headers, body)
        elif path in ("/v1/chat/completions", "/v1/messages", "/v1/models"):
            await exchange.send_json(405, {"error": {"message": "Method not allowed"}})
        else:
            await exchange.send_json(404, {"error": {"message": f"No route for {path}"}})

    async def _control(self, exchange: _Exchange, method: str, path: str) -> None:
        """``GET /_fake/requests`` lists the recorded bodies, ``DELETE`` forgets them: for a
        fake running in another process."""
        if path != "/_fake/requests" or method not in ("GET", "DELETE"):
            await exchange.send_json(404, {"error": {"message": f"No route for {path}"}})
            return
        if method == "DELETE":
            self.reset()
        await exchange.send_json(
            200, {"requests": self.requests, "connections_opened": self.connections_opened}
        )

    def _behaviour(self, body: dict[str, Any] | None) -> Behaviour:
        model = body.get("model") if body else None
        return self.behaviour.with_parts(model if isinstance(model, str) else None)

    @staticmethod
    async def _pause(behaviour: Behaviour) -> None:
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)

    # --- OpenAI ---------------------------------------------------------------------------

    async def _openai_error(
        self, exchange: _Exchange, status: int, message: str | None = None, key: str = ""
    ) -> None:
        kind, code, default = _OPENAI_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        headers = {"retry-after": "1"} if status == 429 else {}
        error = {"message": message or default.format(key=key), "type": kind, "param": None}
        await exchange.send_json(status, {"error": {**error, "code": code}}, headers)

    async def _openai(
        self, exchange: _Exchange, headers: dict[str, str], body: dict[str, Any] | None
    ) -> None:
        if self.api_key is not None:
            presented = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if presented != self.api_key:
                await self._openai_error(exchange, 401, key=presented)
                return
        if body is None or not isinstance(body.get("messages"), list) or not body.get("model"):
            await self._openai_error(exchange, 400, "'messages' and 'model' are required.")
            return
        behaviour = self._behaviour(body)
        if behaviour.drop:
            raise _Drop
        if behaviour.hang:
            raise _Hang
        if behaviour.status is not None:
            await self._openai_error(exchange, behaviour.status)
            return
        results, problem = _openai_tool_results(body["messages"])
        if problem is None and behaviour.mistral:
            problem = _mistral_id_problem(body["messages"])
        if problem is not None:
            await self._openai_error(exchange, 400, problem)
            return
        offered = _offered_tools(body, anthropic=False)
        if results:
            await self._openai_text(exchange, body, behaviour, tool_answer(results))
            return
        if offered and body.get("tool_choice") != "none":
            await self._openai_tool_calls(exchange, body, behaviour, offered)
            return

        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        total, finish = behaviour.tokens, "stop"
        if isinstance(limit, int) and 0 <= limit < total:
            total, finish = limit, "length"
        sent, ending = behaviour.cut()
        sent = min(sent, total)
        ident = f"chatcmpl-fake{next(self._ids)}"
        created = int(time.time())
        model = str(body["model"])
        usage = {
            "prompt_tokens": prompt_tokens_for(body),
            "completion_tokens": total,
            "total_tokens": prompt_tokens_for(body) + total,
        }

        if not body.get("stream"):
            if ending == "fail":
                raise _Drop
            if ending == "hang":
                raise _Hang
            for _ in range(total):
                await self._pause(behaviour)
            message = {"role": "assistant", "content": expected_text(total), "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            await exchange.send_json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [choice],
                    "usage": usage,
                },
            )
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        envelope = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }

        chunk = functools.partial(_openai_chunk, envelope, include_usage)

        token_frame = _Template(chunk({"content": _SLOT}))
        await exchange.start_stream(chunk({"role": "assistant", "content": "", "refusal": None}))
        for index in range(sent):
            await self._pause(behaviour)
            await exchange.send(token_frame.fill(token_text(index)))
        if ending == "fail":
            raise _Drop
        if ending == "hang":
            raise _Hang
        if ending == "eof":
            await exchange.end()
            return
        if ending == "error":
            error = {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            await exchange.send(_sse({"error": error}))
            await exchange.end()
            return
        tail = chunk({}, finish)
        if include_usage and behaviour.usage:
            tail += _sse({**envelope, "choices": [], "usage": usage})
        await exchange.send(tail + _sse("[DONE]"))
        await exchange.end()

    def _openai_envelope(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": kind,
            "created": int(time.time()),
            "model": str(body["model"]),
            "system_fingerprint": None,
        }

    async def _openai_answer(
        self,
        exchange: _Exchange,
        body: dict[str, Any],
        deltas: list[dict[str, Any]],
        message: dict[str, Any],
        finish: str,
        completion_tokens: int,
    ) -> None:
        """An answer given as its stream ``deltas`` (one chunk each) or, not streaming,
        as ``message``."""
        prompt = prompt_tokens_for(body)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }
        if not body.get("stream"):
            envelope = self._openai_envelope(body, "chat.completion")
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            await exchange.send_json(200, {**envelope, "choices": [choice], "usage": usage})
            return
        envelope = self._openai_envelope(body, "chat.completion.chunk")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        chunk = functools.partial(_openai_chunk, envelope, include_usage)

        await exchange.start_stream(chunk(deltas[0]))
        for delta in deltas[1:]:
            await exchange.send(chunk(delta))
        tail = chunk({}, finish)
        if include_usage:
            tail += _sse({**envelope, "choices": [], "usage": usage})
        await exchange.send(tail + _sse("[DONE]"))
        await exchange.end()

    async def _openai_tool_calls(
        self, exchange: _Exchange, body: dict[str, Any], behaviour: Behaviour, offered: list[str]
    ) -> None:
        """Tool calls as OpenAI streams them: the first piece of a call has its index, id,
        type and name with empty arguments; the arguments follow in pieces."""
        count = 1 if body.get("parallel_tool_calls") is False else behaviour.calls
        calls = []
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None, "refusal": None}]
        for index in range(count):
            call_id = (
                f"{next(self._ids):09d}" if behaviour.mistral else f"call_fake{next(self._ids)}"
            )
            name = offered[index % len(offered)]
            arguments = json.dumps(tool_arguments(index))
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
            first = {"index": index, "id": call_id, "type": "function"}
            first["function"] = {"name": name, "arguments": ""}
            deltas.append({"tool_calls": [first]})
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in _pieces(arguments)
            ]
        message = {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}
        tokens = sum(len(call["function"]["arguments"]) for call in calls) // 4
        await self._openai_answer(exchange, body, deltas, message, "tool_calls", tokens)

    async def _openai_text(
        self, exchange: _Exchange, body: dict[str, Any], behaviour: Behaviour, text: str
    ) -> None:
        words = text.split(" ")
        pieces = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
        deltas += [{"content": piece} for piece in pieces]
        message = {"role": "assistant", "content": text, "refusal": None}
        await self._openai_answer(exchange, body, deltas, message, "stop", len(pieces))

    # --- Anthropic ------------------------------------------------------------------------

    async def _anthropic_error(
        self, exchange: _Exchange, status: int, message: str | None = None, key: str = ""
    ) -> None:
        kind, default = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error.")
        )
        headers = {"retry-after": "1"} if status == 429 else {}
        error = {"type": kind, "message": message or default.format(key=key)}
        await exchange.send_json(status, {"type": "error", "error": error}, headers)

    async def _anthropic(
        self, exchange: _Exchange, headers: dict[str, str], body: dict[str, Any] | None
    ) -> None:
        if self.api_key is not None and headers.get("x-api-key", "") != self.api_key:
            await self._anthropic_error(exchange, 401, key=headers.get("x-api-key", ""))
            return
        if not headers.get("anthropic-version"):
            await self._anthropic_error(exchange, 400, "anthropic-version: header is required")
            return
        if body is None or not isinstance(body.get("messages"), list) or not body.get("model"):
            await self._anthropic_error(exchange, 400, "messages: Field required")
            return
        if not isinstance(body.get("max_tokens"), int):
            await self._anthropic_error(exchange, 400, "max_tokens: Field required")
            return
        if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
            await self._anthropic_error(
                exchange, 400, "messages: roles must be 'user' or 'assistant'"
            )
            return
        behaviour = self._behaviour(body)
        if behaviour.drop:
            raise _Drop
        if behaviour.hang:
            raise _Hang
        if behaviour.status is not None:
            await self._anthropic_error(exchange, behaviour.status)
            return
        results, problem = _anthropic_tool_results(body)
        if problem is not None:
            await self._anthropic_error(exchange, 400, problem)
            return
        offered = _offered_tools(body, anthropic=True)
        if results or (offered and (body.get("tool_choice") or {}).get("type") != "none"):
            await self._anthropic_tools(exchange, body, behaviour, offered, results)
            return

        total, stop_reason = behaviour.tokens, "end_turn"
        if body["max_tokens"] < total:
            total, stop_reason = body["max_tokens"], "max_tokens"
        sent, ending = behaviour.cut()
        sent = min(sent, total)
        ident = f"msg_fake{next(self._ids):012d}"
        input_tokens = prompt_tokens_for(body)
        message = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }

        if not body.get("stream"):
            if ending == "fail":
                raise _Drop
            if ending == "hang":
                raise _Hang
            for _ in range(total):
                await self._pause(behaviour)
            message["content"] = [{"type": "text", "text": expected_text(total)}]
            message["stop_reason"] = stop_reason
            message["usage"] = {"input_tokens": input_tokens, "output_tokens": total}
            await exchange.send_json(200, message)
            return

        await exchange.start_stream(
            _sse({"type": "message_start", "message": message}, "message_start")
            + _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
            + _sse({"type": "ping"}, "ping")
        )
        delta = {"type": "text_delta", "text": _SLOT}
        token_frame = _Template(
            _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
        )
        for index in range(sent):
            await self._pause(behaviour)
            await exchange.send(token_frame.fill(token_text(index)))
            if index == 1:  # Anthropic sends pings at any point of a stream
                await exchange.send(_sse({"type": "ping"}, "ping"))
        if ending == "fail":
            raise _Drop
        if ending == "hang":
            raise _Hang
        if ending == "eof":
            await exchange.end()
            return
        if ending == "error":
            error = {"type": "overloaded_error", "message": "Overloaded"}
            await exchange.send(_sse({"type": "error", "error": error}, "error"))
            await exchange.end()
            return
        final_delta = {"stop_reason": stop_reason, "stop_sequence": None}
        await exchange.send(
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            + _sse(
                {"type": "message_delta", "delta": final_delta, "usage": {"output_tokens": total}},
                "message_delta",
            )
            + _sse({"type": "message_stop"}, "message_stop")
        )
        await exchange.end()

    async def _anthropic_tools(
        self,
        exchange: _Exchange,
        body: dict[str, Any],
        behaviour: Behaviour,
        offered: list[str],
        results: list[str],
    ) -> None:
        """Tool calls (a text block, then ``tool_use`` blocks whose input streams as
        ``input_json_delta`` pieces) or, after tool results, the text answering them."""
        ident = f"msg_fake{next(self._ids):012d}"
        input_tokens = prompt_tokens_for(body)
        blocks: list[dict[str, Any]] = []
        if results:
            blocks.append({"type": "text", "text": tool_answer(results)})
            stop_reason = "end_turn"
        else:
            blocks.append({"type": "text", "text": ANTHROPIC_PREAMBLE})
            disabled = (body.get("tool_choice") or {}).get("disable_parallel_tool_use")
            for index in range(1 if disabled else behaviour.calls):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_fake{next(self._ids):012d}",
                        "name": offered[index % len(offered)],
                        "input": tool_arguments(index),
                    }
                )
            stop_reason = "tool_use"
        output_tokens = sum(len(json.dumps(block)) for block in blocks) // 4
        message = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        if not body.get("stream"):
            await exchange.send_json(200, message)
            return
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
        await exchange.start_stream(
            _sse({"type": "message_start", "message": start}, "message_start")
        )
        for index, block in enumerate(blocks):
            events = []
            if block["type"] == "text":
                opened = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece} for piece in _pieces(block["text"], 8)
                ]
            else:
                opened = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": ""}]
                deltas += [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _pieces(json.dumps(block["input"]))
                ]
            events.append(
                _sse(
                    {"type": "content_block_start", "index": index, "content_block": opened},
                    "content_block_start",
                )
            )
            for delta in deltas:
                events.append(
                    _sse(
                        {"type": "content_block_delta", "index": index, "delta": delta},
                        "content_block_delta",
                    )
                )
            events.append(
                _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
            )
            for event in events:
                await exchange.send(event)
        final_delta = {"stop_reason": stop_reason, "stop_sequence": None}
        await exchange.send(
            _sse(
                {
                    "type": "message_delta",
                    "delta": final_delta,
                    "usage": {"output_tokens": output_tokens},
                },
                "message_delta",
            )
            + _sse({"type": "message_stop"}, "message_stop")
        )
        await exchange.end()


def _openai_chunk(
    envelope: dict[str, Any],
    include_usage: bool,
    delta: dict[str, Any],
    finish_reason: str | None = None,
) -> bytes:
    """One ``chat.completion.chunk`` event (``usage`` null, as OpenAI sends it, when the
    client asked for usage)."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    data: dict[str, Any] = {**envelope, "choices": [choice]}
    if include_usage:
        data["usage"] = None
    return _sse(data)


def _mistral_id_problem(messages: list[dict[str, Any]]) -> str | None:
    ids = [call.get("id") for m in messages for call in m.get("tool_calls") or ()]
    ids += [m.get("tool_call_id") for m in messages if m.get("role") == "tool"]
    for call_id in ids:
        if not (isinstance(call_id, str) and re.fullmatch(r"[A-Za-z0-9]{9}", call_id)):
            return f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9."
    return None


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "fake-upstream"}


def unused_port() -> int:
    """A local TCP port nothing listens on (for connection-refused cases)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A thread-served FakeUpstream with default behaviour, usable from any test."""
    with FakeUpstream.running() as upstream:
        yield upstream


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.upstream [--port N] [--behaviour SPEC]``: serve until killed."""
    import argparse

    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--behaviour", default="", help='e.g. "tokens-20+delay-5"')
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--no-record", action="store_true", help="keep no request log")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with FakeUpstream(
            args.behaviour,
            api_key=args.api_key,
            host=args.host,
            port=args.port,
            record=not args.no_record,
        ) as upstream:
            print(upstream.base_url, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
