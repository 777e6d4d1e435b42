"""The server-side tool loop: bounded steps, failures told to the model, client calls
ending the loop."""

import json

import pytest

from chats.providers import (
    CompletionRequest,
    Provider,
    StreamEnd,
    TokenDelta,
    ToolCallDelta,
    ToolSpec,
)
from chats.tool_loop import StepEnd, ToolError, ToolResult, ToolStarted, run_steps


class AlwaysCalls(Provider):
    """A model that calls ``lookup`` in every answer, recording each request."""

    name = "scripted"

    def __init__(self, *names: str) -> None:
        self.names = names or ("lookup",)
        self.requests: list[CompletionRequest] = []

    async def stream(self, request):
        self.requests.append(request)
        yield TokenDelta(f"step {len(self.requests)}")
        for index, name in enumerate(self.names):
            yield ToolCallDelta(index, f"c{len(self.requests)}-{index}", name, '{"q":')
            yield ToolCallDelta(index, arguments=" 1}")
        yield StreamEnd("tool_calls", 10, 5)


class Tool:
    def __init__(self, name: str, answer) -> None:
        self.spec = ToolSpec(name)
        self.answer = answer
        self.calls: list[dict] = []

    async def run(self, arguments, *, call_id):
        self.calls.append(arguments)
        return await self.answer(arguments)


async def ok(arguments):
    return json.dumps({"found": arguments["q"]})


async def collect(provider, tools, *, max_steps=3, guard=None, client=()):
    request = CompletionRequest(
        model="m", messages=[{"role": "user", "content": "go"}], tools=client
    )
    items = []
    async for item in run_steps(
        provider,
        request,
        server_tools={tool.spec.name: tool for tool in tools},
        max_steps=max_steps,
        result_chars=1000,
        guard=guard,
    ):
        items.append(item)
    return items


@pytest.mark.asyncio
async def test_the_step_limit_holds_and_the_last_steps_calls_are_not_run():
    provider, tool = AlwaysCalls(), Tool("lookup", ok)
    items = await collect(provider, [tool], max_steps=3)
    assert len(provider.requests) == 3
    assert len(tool.calls) == 2  # the third step's call is not run
    results = [item for item in items if isinstance(item, ToolResult)]
    assert [r.error is None for r in results] == [True, True, False]
    assert "limit of 3 model steps" in results[-1].error
    assert [item.step for item in items if isinstance(item, StepEnd)] == [0, 1]
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == ("length", 30, 15)
    # Each step sees the calls and results of the steps before it.
    third = provider.requests[2].messages
    assert [m["role"] for m in third] == ["user", "assistant", "tool", "assistant", "tool"]
    assert third[1]["tool_calls"][0] == {"id": "c1-0", "name": "lookup", "arguments": '{"q": 1}'}
    assert third[2]["content"] == '{"found": 1}'


async def failing(arguments):
    raise ToolError("The tool answered HTTP 500.")


async def buggy(arguments):
    raise RuntimeError("bug")


@pytest.mark.asyncio
async def test_every_failure_is_a_result_the_model_is_told():
    tools = [Tool("bad", failing), Tool("buggy", buggy), Tool("lookup", ok)]
    provider = AlwaysCalls("bad", "buggy", "unknown", "lookup")
    items = await collect(provider, tools, max_steps=2)
    started = [item.name for item in items if isinstance(item, ToolStarted)]
    assert started[:4] == ["bad", "buggy", "unknown", "lookup"]
    first = [item for item in items if isinstance(item, ToolResult)][:4]
    assert [r.error for r in first] == [
        "The tool answered HTTP 500.",
        "The tool failed unexpectedly.",
        "Unknown tool 'unknown'.",
        None,
    ]
    told = provider.requests[1].messages[2:6]
    assert json.loads(told[0]["content"]) == {"error": "The tool answered HTTP 500."}
    assert told[0]["is_error"] is True and told[3]["is_error"] is False


@pytest.mark.asyncio
async def test_the_governor_guard_withholds_arguments_and_results():
    tool = Tool("lookup", ok)

    def guard(name, text, direction):
        return text, "withheld" if direction == "result" else None

    items = await collect(AlwaysCalls(), [tool], max_steps=2, guard=guard)
    (result,) = [item for item in items if isinstance(item, ToolResult)][:1]
    assert result.error == "withheld"
    assert tool.calls  # the arguments passed, so the tool ran

    def refuse_arguments(name, text, direction):
        return text, "no" if direction == "arguments" else None

    tool = Tool("lookup", ok)
    await collect(AlwaysCalls(), [tool], max_steps=2, guard=refuse_arguments)
    assert tool.calls == []


@pytest.mark.asyncio
async def test_a_client_tool_call_ends_the_loop_with_tool_calls():
    tool = Tool("lookup", ok)
    provider = AlwaysCalls("lookup", "client_side")
    items = await collect(provider, [tool], client=(ToolSpec("client_side"),))
    assert len(provider.requests) == 1
    assert [r.name for r in items if isinstance(r, ToolResult)] == ["lookup"]
    assert items[-1].finish_reason == "tool_calls"


@pytest.mark.asyncio
async def test_without_tool_calls_the_answer_is_the_models():
    class Plain(Provider):
        name = "plain"

        async def stream(self, request):
            yield TokenDelta("hi")
            yield StreamEnd("stop", 3, 1)

    items = await collect(Plain(), [Tool("lookup", ok)])
    assert items == [TokenDelta("hi"), StreamEnd("stop", 3, 1)]
