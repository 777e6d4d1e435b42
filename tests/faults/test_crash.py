"""A server killed with SIGKILL mid-stream: once its leases lapse, the sweeper keeps every
answer it had checkpointed (status failed) and charges the tokens that were delivered."""

import asyncio
import signal
import time

import httpx
import pytest

from tests import outages
from tests.polling import apoll
from tests.stream_endings import stream

pytest.importorskip("chats.checkpoints", reason="needs leased holds and checkpoints")

# Checkpoints every second; a dead process's leases lapse 3 s after its last renewal.
SERVER = {
    "DEMO_TOKEN_DELAY_MS": "20",
    "STREAM_CHECKPOINT_SECONDS": "1",
    "HOLD_LEASE_SECONDS": "3",
}
STREAMS = 20
FORMATS = ("ws", "docgen", "aisdk", "regpilot", "openai")  # stored ones and stateless ones


def _checkpointed(stack, key) -> int:
    """How many of the tenant's open holds have an answer checkpointed: token counts on the
    hold (stateless requests) or a stored answer with tokens (stored ones)."""
    [(count,)] = outages.query(
        stack.database_url,
        "SELECT COUNT(*) FROM billing_credithold h JOIN billing_tenant t ON t.id = h.tenant_id"
        " LEFT JOIN chats_message m ON m.id = h.message_id"
        " WHERE t.name = %s AND h.status = 'open'"
        " AND (h.completion_tokens > 0 OR m.completion_tokens > 0)",
        (stack.tenants[key],),
    )
    return count


async def _streams_until_killed(server, stack, key):
    async with httpx.AsyncClient() as client:
        tasks = [
            asyncio.create_task(
                stream(
                    client,
                    server.url,
                    key,
                    FORMATS[i % len(FORMATS)],
                    f"[demo:tokens=1000] crash {i}",  # distinct: identical ones join one
                    deadline=20,
                )
            )
            for i in range(STREAMS)
        ]

        async def all_checkpointed() -> bool:
            return await asyncio.to_thread(_checkpointed, stack, key) == STREAMS

        await apoll(all_checkpointed, interval=0.1)
        server.process.send_signal(signal.SIGKILL)
        return await asyncio.gather(*tasks)


def test_a_killed_server_leaves_its_answers_and_charges_to_the_sweeper(stack, serve):
    server = serve(**SERVER)
    key = stack.tenant(credits="5000")
    endings = asyncio.run(_streams_until_killed(server, stack, key))
    server.process.wait(timeout=10)

    assert all(e.kind == "cut" and e.tokens > 0 for e in endings), endings  # none hangs
    delivered = {e.format: e.tokens for e in endings}
    before = stack.books(key)
    assert before["open holds"] == STREAMS  # the dead process's, leased no more

    time.sleep(float(SERVER["HOLD_LEASE_SECONDS"]) + 1)
    stack.manage("release_stale_holds", "--older-than", "0")

    after = stack.books(key)
    assert after["open holds"] == 0
    assert after["ledger equals balance"]
    stored = sum(1 for e in endings if e.format in ("ws", "docgen", "aisdk"))
    assert after["messages"].get("assistant failed", 0) == stored, after  # answers kept
    assert after["messages"].get("assistant streaming", 0) == 0
    charged = stack.settled_tokens(key)
    assert len(charged) == STREAMS, charged  # every hold settled for delivered tokens
    assert all(tokens > 0 for tokens in charged), (charged, delivered)
