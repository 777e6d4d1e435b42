"""The shared plumbing of the streaming transports, without a server."""

import asyncio
import contextlib
import uuid
from decimal import Decimal

import pytest
from django.http import JsonResponse

from chatproject.errors import ApiError, ErrorCode
from chats.engine import ErrorEvent, TokenEvent, Usage
from chats.transports.encoding import credits_text
from chats.transports.generation_stream import GenerationStream, generation_response
from chats.transports.sse import KEEPALIVE, Template, sse
from chats.transports.streaming import QUEUED_CHUNKS, Producer, with_keepalive
from tests.polling import apoll


def test_sse_frames_json_and_event_names():
    assert sse({"content": "hé"}) == 'data: {"content":"hé"}\n\n'.encode()
    assert sse({"a": 1}, event="usage") == b'event: usage\ndata: {"a":1}\n\n'
    assert sse("[DONE]") == b"data: [DONE]\n\n"


def test_sse_splits_multiline_text_into_data_lines():
    assert sse("one\ntwo", event="x") == b"event: x\ndata: one\ndata: two\n\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1.500000"), "1.5"),
        (Decimal("0.000000"), "0"),
        (Decimal("1000.000000"), "1000"),
        (Decimal("999.000123"), "999.000123"),
    ],
)
def test_credits_text_is_plain_decimal(value, text):
    assert credits_text(value) == text


async def _collect(stream, limit=100):
    items = []
    async for item in stream:
        items.append(item)
        if len(items) >= limit:
            break
    return items


@pytest.mark.asyncio
async def test_keepalive_fills_silences_and_passes_chunks_through():
    async def slow():
        yield b"a"
        await asyncio.sleep(0.25)
        yield b"b"

    items = await _collect(with_keepalive(slow(), 0.1))
    assert items[0] == b""  # headers go out at once
    assert items[1] == b"a"
    assert items[-1] == b"b"
    assert 1 <= items.count(KEEPALIVE) <= 3


@pytest.mark.asyncio
async def test_cancelling_the_consumer_cancels_the_source_and_waits_for_its_cleanup():
    cleaned = asyncio.Event()
    sent: list[bytes] = []

    async def forever():
        try:
            sent.append(b"first")
            yield b"first"
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # like the engine storing the cancelled exchange
            cleaned.set()

    async def consume():
        async for _ in with_keepalive(forever(), 10):
            pass

    task = asyncio.create_task(consume())
    await apoll(lambda: sent)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()  # done before the consumer's cancellation completed


@pytest.mark.asyncio
async def test_a_client_that_stopped_reading_still_gets_its_stream_finalised():
    """The producer is blocked on the full queue when the client goes: closing the
    encoder closes the engine's generator too (events_of), before the request ends."""
    cleaned = asyncio.Event()

    async def engine():
        try:
            for index in range(100):
                yield index
        finally:
            await asyncio.sleep(0.05)
            cleaned.set()

    async def encoder():
        async with contextlib.aclosing(engine()) as events:
            async for event in events:
                yield str(event).encode()

    producer = Producer(encoder())

    async def consume():
        stream = with_keepalive(producer, 10)
        async with contextlib.aclosing(stream):  # as Django's ASGI handler does
            async for item in stream:
                if item:
                    await asyncio.Event().wait()  # stuck sending to a gone client

    task = asyncio.create_task(consume())
    await apoll(producer.queue.full)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()


@pytest.mark.asyncio
async def test_a_failing_source_fails_the_stream():
    async def broken():
        yield b"x"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await _collect(with_keepalive(broken(), 10))


@pytest.mark.asyncio
async def test_a_producer_nobody_consumes_is_stopped_when_its_task_ends():
    """A client gone between the view and the response: the engine is not left waiting."""
    cleaned = asyncio.Event()

    async def engine():
        try:
            for _ in range(QUEUED_CHUNKS + 2):  # the last waits for a consumer never coming
                yield b"chunk"
        finally:
            cleaned.set()

    responses = []  # what a response never iterated keeps referenced

    async def view():
        responses.append(Producer(engine()))

    await asyncio.create_task(view())
    await asyncio.wait_for(cleaned.wait(), 1)
    assert responses[0].task.cancelled()


class FakeGeneration:
    """What GenerationStream needs of a Generation: its events, and whether they were
    closed (the engine finalises the exchange then)."""

    def __init__(self, *events, delay: float = 0) -> None:
        self._events = events
        self.delay = delay
        self.started = False
        self.closed = False

    async def events(self):
        self.started = True
        try:
            for event in self._events:
                await asyncio.sleep(self.delay)
                yield event
        finally:
            self.closed = True


def token(index: int) -> TokenEvent:
    return TokenEvent(f"t{index}", index)


async def encode(events):
    yield b"head"
    async for event in events:
        yield event.text.encode()


def upstream_error() -> ErrorEvent:
    error = ApiError(ErrorCode.LLM_PROVIDER_ERROR, "demo: HTTP 500")
    zero = Decimal(0)
    return ErrorEvent(error, uuid.uuid4(), "", Usage(3, 0), zero, zero)


@pytest.mark.asyncio
async def test_the_first_event_is_published_and_the_stream_goes_on_from_it():
    generation = FakeGeneration(token(0), token(1), delay=0.05)
    stream = GenerationStream(generation, encode)
    assert await stream.first_event(5) == token(0)
    items = await _collect(with_keepalive(stream, 10))
    assert items[0] == b"headt0"  # the headers go out with what is ready, at once
    assert b"".join(items) == b"headt0t1"
    assert generation.closed


@pytest.mark.asyncio
async def test_a_late_first_event_is_not_waited_for_and_not_lost():
    generation = FakeGeneration(token(0), delay=0.3)
    stream = GenerationStream(generation, encode)
    assert await stream.first_event(0.05) is None
    items = await _collect(with_keepalive(stream, 0.1))
    assert items[0] == b""
    assert KEEPALIVE in items
    assert b"".join(item for item in items if item != KEEPALIVE) == b"headt0"


@pytest.mark.asyncio
async def test_an_error_first_is_answered_by_error_first_and_the_events_closed(settings):
    settings.SSE_KEEPALIVE_SECONDS = 5
    generation = FakeGeneration(upstream_error())

    def failed(end):
        return JsonResponse({"code": end.error.code}, status=502)

    response = await generation_response(
        generation, encode, headers={"x-model": "m"}, error_first=failed
    )
    assert response.status_code == 502
    assert response["x-model"] == "m"
    assert generation.closed


@pytest.mark.asyncio
async def test_an_error_after_the_first_token_stays_in_the_stream(settings):
    settings.SSE_KEEPALIVE_SECONDS = 5
    generation = FakeGeneration(token(0), upstream_error())

    async def encode_errors(events):
        async for event in events:
            yield b"error" if isinstance(event, ErrorEvent) else event.text.encode()

    response = await generation_response(
        generation, encode_errors, error_first=lambda end: JsonResponse({}, status=502)
    )
    assert response.status_code == 200
    assert b"".join([chunk async for chunk in response]) == b"t0error"


@pytest.mark.asyncio
async def test_a_view_cancelled_while_waiting_for_the_first_event_closes_the_events():
    generation = FakeGeneration(token(0), delay=10)
    stream = GenerationStream(generation, encode)
    waiting = asyncio.create_task(stream.first_event(30))
    await apoll(lambda: generation.started)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert generation.closed


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "format_key"),
    [
        ("/api/ai/chat", "error"),
        ("/v1/chat/completions", "error"),
        ("/api/v1/chat/stream", "error"),
    ],
)
def test_oversized_bodies_are_413_on_the_streaming_endpoints(server, account, path, format_key):
    import httpx

    too_big = "x" * (4 * 1024 * 1024 + 10)
    response = httpx.post(
        f"{server.url}{path}",
        content=too_big.encode(),
        headers={**account.headers, "Authorization": f"Bearer {account.key}"},
        timeout=30,
    )
    assert response.status_code == 413
    assert format_key in response.json()


@pytest.mark.asyncio
async def test_chunks_ready_together_go_out_in_one_write_and_a_lone_one_at_once():
    arrived = asyncio.Event()

    async def engine():
        for index in range(5):  # five tokens from one upstream read
            yield b"t%d" % index
        await arrived.wait()  # then the upstream is slow
        yield b"late"

    writes = with_keepalive(Producer(engine()), 10)
    assert await anext(writes) == b""
    assert await anext(writes) == b"t0t1t2t3t4"
    late = asyncio.create_task(anext(writes))
    await asyncio.sleep(0.05)
    assert not late.done()
    arrived.set()
    assert await asyncio.wait_for(late, 1) == b"late"
    assert await anext(writes, None) is None


@pytest.mark.parametrize("text", ["plain", 'quote " and \\', "line\nbreak", "é ☃ \u2028", ""])
def test_a_template_fills_in_what_encoding_the_whole_event_gives(text):
    def event(content):
        return {"id": "x", "choices": [{"delta": {"content": content}, "finish_reason": None}]}

    assert Template(sse(event(Template.SLOT))).fill(text) == sse(event(text))
    assert Template(sse(event(Template.SLOT), event="e")).fill(text) == sse(event(text), event="e")


def test_sse_framing():
    assert sse({"a": "é", "n": 1.5}) == 'data: {"a":"é","n":1.5}\n\n'.encode()
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert sse("one\ntwo", event="x") == b"event: x\ndata: one\ndata: two\n\n"
    assert sse({"d": Decimal("1.25"), "u": uuid.UUID(int=1)}) == (
        b'data: {"d":1.25,"u":"00000000-0000-0000-0000-000000000001"}\n\n'
    )
