"""`HTTPProvider`, the one `stream()` of every upstream that answers a POST with
server-sent events (send on the pooled session, map HTTP and transport errors, read
events, finish or fail), and the `Reading` each provider fills from its own events."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson

from .base import (
    CompletionRequest,
    LLMConnectionError,
    LLMProviderError,
    Provider,
    StreamEnd,
    StreamItem,
    TokenDelta,
    ToolCallDelta,
    ToolCalls,
)
from .http_client import upstream_session
from .tokens import estimate_prompt_tokens, estimate_tokens
from .wire import (
    TRANSPORT_ERRORS,
    SSEParser,
    error_details,
    parse_json_object,
    redact,
    transport_error,
)

_ERROR_BODY_BYTES = 64 * 1024  # of an error body: enough for any message worth quoting
# What the SSE parser takes at a time. A read returns all of the body the connection has
# buffered (a burst from a fast upstream while the loop was busy: a quarter of a megabyte,
# 1 ms to parse), and the first token would wait for all of it; a slice of this size
# parses in under 0.1 ms before its events go on.
_FEED_BYTES = 16 * 1024


class Reading(ABC):
    """What one upstream stream has told so far; each provider reads its own events."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls = ToolCalls()
        self.finish_reason: str | None = None  # in the upstream's own vocabulary
        self.prompt_tokens: int | None = None  # as reported; None until then
        self.completion_tokens: int | None = None
        self.done = False  # the end marker came: only the end of the body is left

    @property
    def finished(self) -> bool:
        """The whole answer arrived (a finish reason is as good as the end marker)."""
        return self.done or self.finish_reason is not None

    @abstractmethod
    def take(self, event: str, payload: dict[str, Any]) -> Iterable[StreamItem]:
        """Takes in one event's JSON; returns the text and tool call pieces it carries."""

    def text(self, piece: str) -> TokenDelta:
        self.parts.append(piece)
        return TokenDelta(piece)

    def call_piece(self, piece: ToolCallDelta) -> ToolCallDelta:
        self.calls.add(piece)
        return piece

    def finish(self) -> str:
        """The finish reason in OpenAI's names."""
        return self.finish_reason or "stop"

    def end(self, request: CompletionRequest) -> StreamEnd:
        """The stream's last item: reported usage, else estimates of what was sent."""
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return StreamEnd(
            finish_reason=self.finish(),
            prompt_tokens=prompt
            if prompt is not None
            else estimate_prompt_tokens(request.messages),
            completion_tokens=completion
            if completion is not None
            else estimate_tokens("".join(self.parts) + self.calls.text()),
        )


class HTTPProvider(Provider):
    """An upstream that answers a POST with a stream of server-sent events.

    A provider module says where to post (`path`), how to authenticate (`auth_headers`),
    what to send (`build_body`), how to read its events (`new_reading`) and which of them
    are errors (`stream_error`); the stream itself is the same for all.
    """

    path: ClassVar[str]
    end_marker: ClassVar[str | None] = None  # a data line that ends the answer ("[DONE]")
    # Error types in an HTTP error body that make the failure retryable whatever the status.
    retryable_error_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        connect_timeout: float,
        session: aiohttp.ClientSession | None,
        name: str | None,
        headers: Mapping[str, str],
    ) -> None:
        """`timeout` is the longest wait for any byte (the first one, or the next one mid-
        stream)."""
        if name:
            self.name = name
        self._url = base_url.rstrip("/") + self.path
        self._api_key = api_key or None
        self._timeout = timeout
        # Any one wait (to connect, for the first byte, for the next one) is bounded; the
        # whole answer is not: a long answer may stream for minutes.
        self._timeouts = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self._session = session
        self._headers = {
            "accept": "text/event-stream",
            "content-type": "application/json",
            **headers,
        }
        if self._api_key:
            self._headers.update(self.auth_headers(self._api_key))

    @abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry the credential."""

    @abstractmethod
    def build_body(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body sent upstream for `request`."""

    @abstractmethod
    def new_reading(self) -> Reading:
        """An empty reading for one stream."""

    @abstractmethod
    def stream_error(self, event: str, payload: dict[str, Any]) -> LLMProviderError | None:
        """The error an event reports inside a 200 stream, or None for any other event."""

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamItem, None]:
        reading = self.new_reading()
        session = self._session or upstream_session()
        try:
            async with session.post(
                self._url,
                data=orjson.dumps(self.build_body(request)),
                headers=self._headers,
                timeout=self._timeouts,
                allow_redirects=False,
            ) as response:
                if not 200 <= response.status < 300:
                    raise await self.status_error(response)
                for item in await self.whole_answer(response, reading):
                    yield item
                # Read on to the end of the body after the answer is complete, so that
                # the connection goes back to the pool instead of being closed.
                parser, body = SSEParser(), response.content
                while read := await body.readany():
                    for start in range(0, len(read), _FEED_BYTES):
                        # A read of one slice or less goes as it is (not copied).
                        for event, data in parser.feed(read[start : start + _FEED_BYTES]):
                            if reading.done:
                                continue
                            if data == self.end_marker:
                                reading.done = True
                                continue
                            payload = parse_json_object(data)
                            if payload is None:
                                raise LLMProviderError(
                                    f"{self.name} sent malformed stream data", retryable=False
                                )
                            error = self.stream_error(event, payload)
                            if error is not None:
                                raise error
                            for item in reading.take(event, payload):
                                yield item
        except TRANSPORT_ERRORS as exc:
            # Once the answer is complete, a failure while draining the body costs nothing.
            if not reading.finished:
                raise transport_error(
                    exc, upstream=self.name, timeout=self._timeout, secret=self._api_key
                ) from exc

        if not reading.finished:
            raise LLMConnectionError(f"{self.name} closed the stream before it finished")
        yield reading.end(request)

    async def whole_answer(
        self, response: aiohttp.ClientResponse, reading: Reading
    ) -> list[StreamItem]:
        """The items of an answer that came whole instead of as events (none by default)."""
        return []

    async def status_error(self, response: aiohttp.ClientResponse) -> LLMProviderError:
        """The error for a non-2xx answer, its body's message quoted with the key masked."""
        message, kind = error_details(await response.content.read(_ERROR_BODY_BYTES))
        status = response.status
        return LLMProviderError(
            self.redact(f"{self.name} answered HTTP {status}: {message}"),
            status=status,
            retryable=True if kind in self.retryable_error_types else None,
        )

    def redact(self, text: str) -> str:
        return redact(text, self._api_key)
