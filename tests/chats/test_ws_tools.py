"""Server tools over /ws/chat: tool_call_started and tool_call_ended events, and a chat's
history giving the calls and results back to the model."""

import json

import pytest
from asgiref.sync import sync_to_async

from chats import selectors
from chats.models import Message
from tests.chats.test_consumer import connect, receive, receive_until
from tests.factories import make_chat, make_key, make_tenant
from tests.fakes.tool_server import running_tool_server
from tools.models import HttpTool

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

SECRET = "whsec_ws"


@pytest.fixture
def webhook(settings):
    settings.TOOLS_ALLOW_PRIVATE_URLS = True
    settings.MODEL_CATALOG_TTL_SECONDS = 0  # the tenant's tools are read afresh
    with running_tool_server(SECRET) as hook:
        yield hook


def tooled_tenant(url: str):
    tenant = make_tenant(credits=1000)
    HttpTool.objects.create(tenant=tenant, name="lookup", url=url, signing_secret=SECRET)
    HttpTool.objects.create(tenant=tenant, name="broken", url=url.replace("/echo", "/fail"))
    return tenant, make_key(tenant), make_chat(tenant)


async def test_server_tools_are_reported_as_events_and_kept_in_the_history(webhook):
    _, key, chat = await sync_to_async(tooled_tenant)(webhook.url + "/echo")
    ws, connected, _ = await connect(key, chat_id=chat.id)
    assert connected
    await receive(ws)
    await ws.send_json_to(
        {"content": '[demo:tool=lookup {"order": "A1"}][demo:tool=broken {"x": 1}] where?'}
    )
    events = await receive_until(ws, "message_stream_ended")
    types = [event["type"] for event in events]
    assert types[:2] == ["message_received", "message_stream_started"]
    started = [e for e in events if e["type"] == "tool_call_started"]
    ended = [e for e in events if e["type"] == "tool_call_ended"]
    assert [(e["name"], e["arguments"]) for e in started] == [
        ("lookup", {"order": "A1"}),
        ("broken", {"x": 1}),
    ]
    assert types.index("tool_call_ended") > types.index("tool_call_started")
    assert ended[0]["status"] == "ok"
    assert ended[0]["result"] == {"echo": {"order": "A1"}, "signed": True}
    assert ended[0]["tool_call_id"] == started[0]["tool_call_id"]
    assert (ended[1]["status"], ended[1]["error"]) == ("error", "The tool answered HTTP 500.")
    final = events[-1]
    assert final["content"].startswith('The tool lookup returned: {"echo"')
    assert [call["name"] for call in final["tool_calls"]] == ["lookup", "broken"]
    assert final["tool_calls"][1]["error"] == "The tool answered HTTP 500."

    # The next turn gives the model the calls, their results and the answer.
    history = await sync_to_async(selectors.chat_history)(chat=chat, limit=10)
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "tool", "assistant"]
    assert history[1]["tool_calls"][0]["name"] == "lookup"
    assert json.loads(history[3]["content"]) == {"error": "The tool answered HTTP 500."}
    await ws.send_json_to({"content": "thanks", "excludeTools": ["lookup", "broken"]})
    events = await receive_until(ws, "message_stream_ended")
    assert "tool_call_started" not in [e["type"] for e in events]
    assert events[-1]["content"] == "This is the offline demo model. You said: thanks"
    stored = await sync_to_async(list)(
        Message.objects.filter(chat=chat).values_list("role", flat=True)
    )
    assert stored == ["user", "assistant", "user", "assistant"]
    await ws.disconnect()


async def test_exclude_tools_must_be_a_list_of_strings(webhook):
    _, key, chat = await sync_to_async(tooled_tenant)(webhook.url + "/echo")
    ws, _, _ = await connect(key, chat_id=chat.id)
    await receive(ws)
    await ws.send_json_to({"content": "hi", "excludeTools": "lookup"})
    error = await receive(ws)
    assert error["type"] == "error"
    assert "excludeTools" in error["details"]
    await ws.disconnect()
