"""Credit hold leases against live daphne processes: the sweeper leaves running streams
alone, and settles for what a killed process had generated."""

import asyncio
import io
import json
import os
import signal
import threading
from decimal import Decimal

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db.models import Sum

from billing.models import CreditHold, LedgerEntry, Tenant
from billing.sweeper import holds_sweep
from chats.models import Message
from tests.factories import make_chat, make_key, make_tenant
from tests.live import start_server
from tests.polling import apoll

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

# Leases renewed every 0.3 s, lapsing 1.5 s after the last renewal.
LEASES = {"STREAM_CHECKPOINT_SECONDS": "0.3", "HOLD_LEASE_SECONDS": "1.5"}
TIMEOUT = 20


@pytest.fixture
def leased_server(tmp_path):
    server = start_server(tmp_path, **LEASES)
    yield server
    server.stop()


def books(tenant: Tenant) -> tuple[Decimal, Decimal]:
    total = LedgerEntry.objects.filter(tenant=tenant).aggregate(s=Sum("amount"))["s"]
    return total, Tenant.objects.get(pk=tenant.pk).credit_balance


async def stream(url: str, content: str, received: list[str], *, stop: asyncio.Event | None = None):
    """One exchange over its own socket; ``received`` collects the tokens as they come.
    The last event, or None if the server went away first."""
    try:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"content": content}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if event["type"] == "message_stream_token":
                    received.append(event["token"])
                elif event["type"] in ("message_stream_ended", "error"):
                    return event
    except (websockets.ConnectionClosed, OSError):
        return None


def sockets(server, tenant, count: int) -> list[str]:
    key = make_key(tenant)
    chats = [make_chat(tenant, user_id=f"u{i}") for i in range(count)]
    return [
        f"{server.ws_url}/ws/chat?api_key={key}&user_id=u{i}&chat_id={chat.id}"
        for i, chat in enumerate(chats)
    ]


async def test_the_sweeper_leaves_running_streams_alone(leased_server):
    tenant = await sync_to_async(make_tenant)(credits=1000)
    urls = await sync_to_async(sockets)(leased_server, tenant, 4)
    done = threading.Event()
    sweeps: list[str] = []

    def sweep_meanwhile():  # the cron job, run as often as it can be
        while not done.is_set():
            out = io.StringIO()
            call_command("release_stale_holds", "--older-than", "1", stdout=out)
            sweeps.append(out.getvalue())
            done.wait(0.2)

    sweeper = threading.Thread(target=sweep_meanwhile)
    sweeper.start()
    try:
        received = [[] for _ in urls]
        ends = await asyncio.gather(
            *(
                # distinct questions: identical ones would join one generation
                stream(url, f"[demo:tokens=200][demo:delay=15] go {i}", got)
                for i, (url, got) in enumerate(zip(urls, received, strict=True))
            )
        )
    finally:
        done.set()
        await asyncio.to_thread(sweeper.join)
    assert len(sweeps) >= 5, "the sweeper ran throughout the streams"
    assert all(s.startswith("Released 0 stale hold(s); settled 0") for s in sweeps), sweeps
    assert [e["type"] for e in ends] == ["message_stream_ended"] * 4
    assert all(len(got) == 200 for got in received)

    def check():
        for end in ends:
            hold = CreditHold.objects.get(message_id=end["message_id"])
            assert hold.status == "settled"
            assert hold.completion_tokens == 200
            assert Decimal(str(end["credits_charged"])) == hold.charged  # told == taken
        total, balance = books(tenant)
        assert total == balance

    await sync_to_async(check)()


async def test_a_killed_process_keeps_its_answers_and_is_charged_for_them(leased_server):
    tenant = await sync_to_async(make_tenant)(credits=1000)
    urls = await sync_to_async(sockets)(leased_server, tenant, 5)
    received = [[] for _ in urls]
    streams = [
        asyncio.ensure_future(stream(url, f"[demo:tokens=2000][demo:delay=10] go {i}", got))
        for i, (url, got) in enumerate(zip(urls, received, strict=True))
    ]

    def every_answer_a_second_in() -> bool:
        ended = [s.result() for s in streams if s.done()]
        assert not ended, f"a stream ended before it was killed: {ended}"
        return min(len(got) for got in received) >= 100

    def checkpointed() -> bool:  # at least those first 100 tokens, of every answer
        answers = Message.objects.filter(chat__tenant=tenant, role="assistant")
        return answers.filter(status="streaming", completion_tokens__gte=100).count() == 5

    await apoll(every_answer_a_second_in, timeout=TIMEOUT)
    await apoll(sync_to_async(checkpointed), timeout=TIMEOUT, interval=0.1)
    os.kill(leased_server.process.pid, signal.SIGKILL)
    leased_server.process.wait()
    assert await asyncio.gather(*streams) == [None] * 5  # no stream ended by the server

    def open_holds():
        return list(CreditHold.objects.filter(tenant=tenant, status="open"))

    assert len(await sync_to_async(open_holds)()) == 5
    await asyncio.sleep(1.6)  # the leases lapse: nobody renews them
    sweep = await sync_to_async(holds_sweep)(older_than_seconds=0)
    assert (sweep.released, sweep.settled) == (0, 5)

    def check():
        answers = Message.objects.filter(chat__tenant=tenant, role="assistant")
        assert answers.count() == 5
        delivered = {"".join(got) for got in received}
        for answer in answers:
            assert answer.status == "failed"
            # What was checkpointed: at least the first 100 tokens, no more than went out.
            assert answer.completion_tokens >= 100
            assert any(text.startswith(answer.content) for text in delivered)
            hold = CreditHold.objects.get(message_id=answer.id)
            assert (hold.status, hold.completion_tokens) == ("settled", answer.completion_tokens)
            assert hold.charged > 0
        assert not open_holds()
        total, balance = books(tenant)
        assert (
            total
            == balance
            == Decimal(1000)
            - sum(CreditHold.objects.filter(tenant=tenant).values_list("charged", flat=True))
        )

    await sync_to_async(check)()
