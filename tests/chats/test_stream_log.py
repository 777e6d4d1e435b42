"""The stream log: tokens appended in batches, read from any index and followed live."""

import asyncio
import uuid

import pytest

from chatproject.redis import get_redis
from chats import stream_log
from chats.stream_log import LogEnd, LogToken, LogWriter

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
