"""Tool calls below the transports: the demo model's tool directives, the providers'
translations, context trimming."""

import json

import pytest

from chats.context import trim_to_budget
from chats.providers import (
    AnthropicProvider,
    CompletionRequest,
    DemoProvider,
    OpenAICompatibleProvider,
    StreamEnd,
    TokenDelta,
    ToolCallDelta,
    ToolCalls,
    ToolSpec,
)

WEATHER = ToolSpec("get_weather", "The weather.", {"type": "object"})


async def collect(request: CompletionRequest) -> tuple[str, list[dict], StreamEnd]:
    text, calls, end = [], ToolCalls(), None
    pieces = 0
    async for item in DemoProvider().stream(request):
        if isinstance(item, TokenDelta):
            text.append(item.text)
        elif isinstance(item, ToolCallDelta):
            pieces += 1
            calls.add(item)
        else:
            end = item
    assert not calls or pieces > len(calls.done()), "arguments come in pieces"
    return "".join(text), calls.done(), end


def ask(content: str, *, tools=(WEATHER,), **kwargs) -> CompletionRequest:
    return CompletionRequest(
        model="demo", messages=[{"role": "user", "content": content}], tools=tools, **kwargs
    )


@pytest.mark.asyncio
async def test_demo_calls_the_tools_its_directives_name():
    text, calls, end = await collect(
        ask('go [demo:tool=get_weather {"city": "Oslo", "days": [1, 2]}] [demo:tool=get_time]')
    )
    assert text == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo", "days": [1, 2]}),
        ("get_time", {}),
    ]
    assert calls[0]["id"] != calls[1]["id"]
    assert end.finish_reason == "tool_calls"
    assert end.completion_tokens > 0


@pytest.mark.asyncio
async def test_demo_without_tools_or_with_tool_choice_none_answers_in_text():
    for request in (
        ask("hi [demo:tool=get_weather]", tools=()),
        ask("hi [demo:tool=get_weather]", tool_choice="none"),
    ):
        text, calls, end = await collect(request)
        assert calls == []
        assert text == "This is the offline demo model. You said: hi"
        assert end.finish_reason == "stop"


@pytest.mark.asyncio
async def test_demo_quotes_the_tool_results_the_conversation_ends_with():
    messages = [
        {"role": "user", "content": "[demo:tool=get_weather]"},
        {"role": "assistant", "content": "", "tool_calls": [_call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": '{"t": 3}'},
    ]
    request = CompletionRequest(model="demo", messages=messages, tools=(WEATHER,))
    text, calls, _ = await collect(request)
    assert calls == []
    assert text == 'The tool get_weather returned: {"t": 3}'


def _call(call_id: str) -> dict:
    return {"id": call_id, "name": "get_weather", "arguments": '{"city": "Oslo"}'}


def test_trimming_drops_tool_results_with_the_calls_they_answer():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": "", "tool_calls": [_call("c1"), _call("c2")]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "x" * 400},
        {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": "y" * 400},
        {"role": "user", "content": "now"},
    ]
    assert [m["role"] for m in trim_to_budget(messages, 50)] == ["system", "user"]


def test_anthropic_turns_carry_tool_use_and_tool_result_blocks():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Calling.", "tool_calls": [_call("c1"), _call("c2")]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": ""},
        {"role": "user", "content": "and?"},
    ]
    request = CompletionRequest(
        model="m", messages=messages, tools=(WEATHER,), tool_choice="get_weather",
        parallel_tool_calls=False,
    )  # fmt: skip
    body = AnthropicProvider("k").build_body(request)
    assert body["messages"][0] == {"role": "user", "content": "q"}
    assistant, results = body["messages"][1:]
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert assistant["content"][1]["input"] == {"city": "Oslo"}
    assert [b["type"] for b in results["content"]] == ["tool_result", "tool_result", "text"]
    assert results["content"][1]["content"] == "(empty)"  # Anthropic refuses empty results
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }


def test_openai_body_carries_tool_calls_and_mistral_gets_its_own_ids():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_abcdefghijkl")]},
        {"role": "tool", "tool_call_id": "call_abcdefghijkl", "name": "x", "content": "1"},
    ]
    request = CompletionRequest(model="m", messages=messages, tools=(WEATHER,))
    body = OpenAICompatibleProvider("http://up/v1", None).build_body(request)
    assert body["messages"][1]["content"] is None
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert body["messages"][2]["tool_call_id"] == "call_abcdefghijkl"
    assert body["tools"][0]["function"]["name"] == "get_weather"
    mistral = OpenAICompatibleProvider("http://up/v1", None, mistral=True).build_body(request)
    call_id = mistral["messages"][1]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum()
    assert mistral["messages"][2]["tool_call_id"] == call_id
