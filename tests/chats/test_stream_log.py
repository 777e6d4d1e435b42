"""The stream log: tokens appended in batches, read from any index and followed live."""

import asyncio
import uuid

import pytest

from chatproject.redis import get_redis
from chats import stream_log
from chats.stream_log import LogEnd, LogToken, LogWriter
from chats.stream_log import writer as log_writer
from tests.polling import apoll

END = LogEnd("complete", "stop", 3, 5)


async def collect(log_id: str, after: int = -1) -> list:
    return [item async for item in stream_log.follow(log_id, after)]


@pytest.mark.asyncio
async def test_a_follower_gets_every_token_then_the_end(memory_or_redis):
    log_id = uuid.uuid4().hex
    writer = LogWriter(log_id)
    follower = asyncio.ensure_future(collect(log_id))  # started before the first token
    for index in range(50):
        writer.append(f"t{index} ")
        if index % 7 == 0:
            await asyncio.sleep(0.005)
    await writer.close(END)
    items = await asyncio.wait_for(follower, 10)
    assert items == [LogToken(i, f"t{i} ") for i in range(50)] + [END]
    # A late reader replays the whole log; one resuming reads only what came after.
    assert await collect(log_id) == items
    assert await collect(log_id, after=44) == items[45:]


@pytest.mark.asyncio
async def test_redis_gets_tokens_in_batches_and_the_log_expires(memory_or_redis, settings):
    if memory_or_redis != "redis":
        pytest.skip("Redis only")
    settings.STREAM_LOG_BATCH = 8
    settings.STREAM_LOG_TTL_SECONDS = 30
    log_id = uuid.uuid4().hex
    writer = LogWriter(log_id)
    for index in range(20):  # no await between them: only the count flushes
        writer.append(str(index))
    await asyncio.sleep(0.05)
    await writer.close(END)
    key = f"streams:log:{log_id}"
    client = get_redis()
    assert await client.xlen(key) < 20  # several tokens an entry, plus the end entry
    assert 0 < await client.pttl(key) <= 30_000
    assert [item.text for item in (await collect(log_id))[:-1]] == [str(i) for i in range(20)]


@pytest.mark.asyncio
async def test_a_follower_of_a_silent_log_times_out(memory_or_redis, settings):
    settings.LLM_TIMEOUT_SECONDS = 0.3
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(uuid.uuid4().hex), 5)


@pytest.mark.asyncio
async def test_the_first_claim_wins_until_released(memory_or_redis):
    cache_key = f"test:{uuid.uuid4().hex}"
    assert await stream_log.claim(cache_key, "first") is None
    assert await stream_log.claim(cache_key, "second") == "first"
    await stream_log.release(cache_key, "second")  # not its claim: kept
    assert await stream_log.claim(cache_key, "third") == "first"
    await stream_log.release(cache_key, "first")
    assert await stream_log.claim(cache_key, "third") is None


@pytest.mark.asyncio
async def test_a_claim_lapses_after_the_model_timeout(memory_or_redis, settings):
    settings.LLM_TIMEOUT_SECONDS = 0.2  # a dead process's claim stops drawing requests
    cache_key = f"test:{uuid.uuid4().hex}"
    assert await stream_log.claim(cache_key, "dead") is None
    await asyncio.sleep(0.3)
    assert await stream_log.claim(cache_key, "alive") is None


# --- Resumable streams: the chunks a client was sent ------------------------------------

HEADER = stream_log.WireHeader("aisdk", 7, "chat-1")


async def collect_wire(log_id: str, after: int = -1) -> list:
    return [item async for item in stream_log.follow_wire(log_id, after)]


@pytest.mark.asyncio
async def test_a_wired_log_replays_its_chunks_after_any_position_then_live(memory_or_redis):
    log_id = uuid.uuid4().hex
    writer = LogWriter(log_id)
    writer.wire(stream_log.WireHeader("aisdk", 7, f"chat-{log_id}"), on_stop=lambda: None)
    seqs = [writer.append_chunk(f"chunk {n}") for n in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    writer.append("token")
    header = await apoll(lambda: stream_log.wire_header(log_id))
    assert header.chat_id == f"chat-{log_id}"
    late = asyncio.ensure_future(collect_wire(log_id, after=2))
    await writer.close(END)  # the tokens' end: joiners stop here, the chunks go on
    assert await collect(log_id) == [LogToken(0, "token"), END]
    writer.append_chunk("last chunk")
    await writer.close_wire("complete")
    expected = [stream_log.WireChunk(n, f"chunk {n}") for n in (3, 4)]
    expected += [stream_log.WireChunk(5, "last chunk"), stream_log.WireEnd("complete")]
    assert await asyncio.wait_for(late, 10) == expected
    assert len(await collect_wire(log_id)) == 7


@pytest.mark.asyncio
async def test_a_chats_stream_is_active_until_its_last_chunk(memory_or_redis):
    log_id, chat_id = uuid.uuid4().hex, f"chat-{uuid.uuid4().hex}"
    writer = LogWriter(log_id)
    writer.wire(stream_log.WireHeader("aisdk", 7, chat_id), on_stop=lambda: None)
    assert await apoll(lambda: stream_log.active_stream(7, "aisdk", ["other", chat_id])) == log_id
    assert await stream_log.active_stream(8, "aisdk", [chat_id]) is None  # another tenant's
    assert await stream_log.active_stream(7, "ws", [chat_id]) is None  # another format's
    await writer.close(END)
    assert await stream_log.active_stream(7, "aisdk", [chat_id]) == log_id
    await writer.close_wire("complete")
    assert await stream_log.active_stream(7, "aisdk", [chat_id]) is None


@pytest.mark.asyncio
async def test_a_stream_over_within_one_flush_is_not_left_active(memory_or_redis):
    log_id, chat_id = uuid.uuid4().hex, f"chat-{uuid.uuid4().hex}"
    writer = LogWriter(log_id)
    writer.wire(stream_log.WireHeader("aisdk", 7, chat_id), on_stop=lambda: None)
    writer.append_chunk("all of it")  # header, chunk and both ends go out together
    await writer.close(END)
    await writer.close_wire("complete")
    assert await stream_log.active_stream(7, "aisdk", [chat_id]) is None
    assert await stream_log.wire_state(log_id) == (stream_log.WireHeader("aisdk", 7, chat_id), 1)


@pytest.mark.asyncio
async def test_a_stop_request_reaches_the_writer_in_this_process_or_through_redis(
    memory_or_redis,
):
    stopped = asyncio.Event()
    log_id = uuid.uuid4().hex
    writer = LogWriter(log_id)
    writer.wire(HEADER, on_stop=stopped.set)
    await stream_log.request_stop(log_id)
    assert stopped.is_set()
    await writer.close_wire("cancelled")
    if memory_or_redis != "redis":
        return
    # As if another process asked: the writer sees it with its next flush, or when idle.
    stopped.clear()
    log_id = uuid.uuid4().hex
    writer = LogWriter(log_id)
    writer.wire(HEADER, on_stop=stopped.set)
    del log_writer._local_writers[log_id]
    await stream_log.request_stop(log_id)
    await asyncio.wait_for(stopped.wait(), stream_log.STOP_CHECK_SECONDS + 2)
    await writer.close_wire("cancelled")


@pytest.mark.asyncio
async def test_a_resume_of_an_unknown_stream_finds_nothing(memory_or_redis):
    assert await stream_log.wire_header(uuid.uuid4().hex) is None
    plain = uuid.uuid4().hex
    writer = LogWriter(plain)  # not resumable: no header
    writer.append("x")
    await writer.close(END)
    assert await stream_log.wire_header(plain) is None
