"""Cool-downs: counted failures within a window start one; it ends by itself."""

import asyncio
import uuid

import pytest

from chats import cooldown
from tests.polling import apoll


@pytest.fixture
def counting(settings, memory_or_redis):
    settings.MODEL_COOLDOWN_FAILURES = 3
    settings.MODEL_COOLDOWN_SECONDS = 30
    cooldown.forget()
    yield
    cooldown.forget()


def name() -> str:
    return f"m-{uuid.uuid4().hex}"


@pytest.mark.asyncio
async def test_the_failure_that_reaches_the_threshold_starts_the_cool_down(counting):
    failing, other = name(), name()
    assert [await cooldown.record_failure(failing) for _ in range(2)] == [False, False]
    assert await cooldown.cooling([failing, other]) == set()
    assert await cooldown.record_failure(failing) is True
    assert await cooldown.cooling([failing, other]) == {failing}


@pytest.mark.asyncio
async def test_failures_further_apart_than_the_window_do_not_add_up(counting, settings):
    settings.MODEL_COOLDOWN_SECONDS = 0.3
    failing = name()
    for _ in range(2):
        assert await cooldown.record_failure(failing) is False
    await asyncio.sleep(0.4)  # the window of the first two has passed
    assert await cooldown.record_failure(failing) is False
    assert await cooldown.cooling([failing]) == set()


@pytest.mark.asyncio
async def test_a_cool_down_ends_by_itself(counting, settings):
    settings.MODEL_COOLDOWN_SECONDS = 0.3
    settings.MODEL_COOLDOWN_FAILURES = 1
    failing = name()
    assert await cooldown.record_failure(failing) is True
    assert await cooldown.cooling([failing]) == {failing}

    async def ended() -> bool:
        return not await cooldown.cooling([failing])

    await apoll(ended, timeout=5)
