"""Client tools through POST /v1/chat/completions with the official `openai` SDK: a tool
call, the client's tool results, the answer, through every provider kind (the demo model,
an OpenAI-compatible upstream, Mistral and Anthropic) against fake upstreams over HTTP."""

import json

import openai
import pytest

from chats import catalog
from chats.models import LLMModel, Message
from tests.fakes.upstream import ANTHROPIC_PREAMBLE, FakeUpstream, tool_answer, tool_arguments
from tests.transports.conftest import unique

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
]
PROVIDERS = ["demo/balanced", "fake-openai", "fake-mistral", "fake-anthropic"]


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream.running() as up:
        yield up


@pytest.fixture
def models(server, upstream):
    upstream.reset()
    rows = [
        (
            "fake-openai",
            "openai_compatible",
            "fake-model",
            upstream.openai_base_url,
        ),
        ("fake-mistral", "mistral", "fake-model+mistral", upstream.openai_base_url),
        ("fake-anthropic", "anthropic", "fake-claude", upstream.base_url),
    ]
    for name, provider, upstream_model, base_url in rows:
        LLMModel.objects.update_or_create(
            name=name,
            defaults={
                "provider": provider,
                "upstream_model": upstream_model,
                "base_url": base_url,
                "api_key_env": "",
            },
        )
    catalog.clear_catalog_cache()
    yield upstream
    catalog.clear_catalog_cache()


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def question() -> str:
    # The demo model calls what these directives say; the fakes call the offered tools.
    return unique(
        'Weather and time in Paris? [demo:tool=get_weather {"city": "City 0", "units": '
        '"metric", "days": 1}][demo:tool=get_time {"city": "City 1", "units": "metric", '
        '"days": 2}]'
    )


def tool_result(call_id: str, name: str, arguments: str) -> dict:
    city = json.loads(arguments)["city"]
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps({name: city})}


def expected_answer(model: str, results: list[dict]) -> str:
    if model.startswith("demo/"):
        names = ["get_weather", "get_time"]
        return " ".join(
            f"The tool {name} returned: {r['content']}"
            for name, r in zip(names, results, strict=True)
        )
    return tool_answer([r["content"] for r in results])


def check_calls(calls: list[tuple[str, str, str]]) -> None:
    """Two calls, each with its own id, the offered tools in turn, the arguments whole."""
    assert [name for _, name, _ in calls] == ["get_weather", "get_time"]
    assert len({call_id for call_id, _, _ in calls}) == 2
    assert [json.loads(arguments) for _, _, arguments in calls] == [
        tool_arguments(0),
        tool_arguments(1),
    ]


@pytest.mark.parametrize("model", PROVIDERS)
def test_non_streaming_round_trip(server, account, models, model):
    sdk = client(server, account.key)
    messages = [{"role": "user", "content": question()}]
    first = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    check_calls(calls)
    if model == "fake-anthropic":  # the text block before the tool_use blocks
        assert choice.message.content == ANTHROPIC_PREAMBLE

    results = [tool_result(*call) for call in calls]
    messages += [choice.message.model_dump(exclude_none=True), *results]
    second = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == expected_answer(model, results)
    assert second.choices[0].message.tool_calls is None


@pytest.mark.parametrize("model", PROVIDERS)
def test_streaming_round_trip_keeps_each_calls_pieces_under_its_index(
    server, account, models, model
):
    sdk = client(server, account.key)
    messages = [{"role": "user", "content": question()}]
    stream = sdk.chat.completions.create(
        model=model,
        messages=messages,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls: dict[int, dict] = {}
    pieces = 0
    for chunk in chunks:
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or ():
            pieces += 1
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            if piece.id:
                assert call["id"] is None, "only a call's first piece has its id"
                call["id"] = piece.id
                call["name"] = piece.function.name
            call["arguments"] += piece.function.arguments or ""
    assert sorted(calls) == [0, 1]
    assert pieces > 4, "the arguments came in pieces"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0
    ordered = [(calls[i]["id"], calls[i]["name"], calls[i]["arguments"]) for i in (0, 1)]
    check_calls(ordered)

    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in ordered
        ],
    }
    results = [tool_result(*call) for call in ordered]
    answer = sdk.chat.completions.create(
        model=model, messages=[*messages, assistant, *results], tools=TOOLS, stream=True
    )
    chunks = list(answer)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_answer(model, results)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_results_reach_each_upstream_in_its_own_format(server, account, models):
    sdk = client(server, account.key)
    for model in ("fake-openai", "fake-mistral", "fake-anthropic"):
        messages = [{"role": "user", "content": question()}]
        first = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        message = first.choices[0].message
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
        results = [tool_result(*call) for call in calls]
        messages += [message.model_dump(exclude_none=True), *results]
        sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="auto")
    openai_body, mistral_body, anthropic_body = models.requests[1::2]
    assert [m["tool_call_id"] for m in openai_body["messages"][-2:]] == calls_of(openai_body)[:2]
    assert openai_body["tool_choice"] == "auto"
    assert all(len(call_id) == 9 for call_id in calls_of(mistral_body))
    assistant, results = anthropic_body["messages"][-2:]
    assert [block["type"] for block in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert assistant["content"][1]["input"] == tool_arguments(0)
    assert [block["type"] for block in results["content"]] == ["tool_result", "tool_result"]
    assert anthropic_body["tool_choice"] == {"type": "auto"}
    assert anthropic_body["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]


def calls_of(body: dict) -> list[str]:
    ids = [call["id"] for m in body["messages"] for call in m.get("tool_calls") or ()]
    return ids + [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("model", ["fake-openai", "fake-anthropic", "demo/balanced"])
def test_parallel_tool_calls_false_asks_for_one_call(server, account, models, model):
    completion = client(server, account.key).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question()}],
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    assert len(completion.choices[0].message.tool_calls) == 1


def test_tool_choice_none_answers_in_text(server, account, models):
    completion = client(server, account.key).chat.completions.create(
        model="demo/balanced",
        messages=[{"role": "user", "content": question()}],
        tools=TOOLS,
        tool_choice="none",
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None


def test_an_answer_with_tool_calls_is_never_cached(server, account, models):
    sdk = client(server, account.key)
    messages = [{"role": "user", "content": question()}]
    for _ in range(2):
        sdk.chat.completions.create(model="fake-openai", messages=messages, tools=TOOLS)
    assert len(models.requests) == 2  # both went to the upstream
    # A text answer to the same question without tools is cached as before.
    for _ in range(2):
        sdk.chat.completions.create(model="fake-openai", messages=messages)
    assert len(models.requests) == 3
    assert not Message.objects.exists()  # /v1 stores nothing
