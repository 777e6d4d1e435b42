"""The body of ``POST /v1/chat/completions`` (OpenAI's chat completion request, text
and function tools only): its parser and its OpenAPI schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatproject import openapi_fragments as oa
from chats.providers import TOOL_CHOICE_MODES, ToolSpec
from chats.transports.schemas.readers import (
    MAX_ID_LENGTH,
    MAX_INTEGER,
    MAX_NAME_LENGTH,
    TEMPERATURE,
    TIER_OR_MODEL,
    Errors,
    array,
    boolean,
    check_last_message,
    integer,
    json_object,
    last_message_note,
    number,
    string,
    temperature_schema,
)
from chats.transports.schemas.tools import tool_specs, tools_schema

OPENAI_TEMPERATURE = 1.0

OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


@dataclass(frozen=True)
class OpenAIChatRequest:
    messages: list[dict[str, Any]]
    model: str
    temperature: float
    max_tokens: int | None
    stream: bool
    include_usage: bool
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None


def _openai_content(message: dict[str, Any], name: str, errors: Errors) -> str | None:
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant":
            return ""
        errors.add(f"{name}.content", "This field is required.")
        return None
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        errors.add(f"{name}.content", "Must be a string or an array of content parts.")
        return None
    texts = []
    for index, part in enumerate(content):
        part_name = f"{name}.content[{index}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            errors.add(part_name, "Only text content parts are supported.")
            continue
        text = string(part, "text", errors, name=f"{part_name}.text", required=True)
        if text is not None:
            texts.append(text)
    return "".join(texts)


def parse_openai_chat(body: dict[str, Any]) -> OpenAIChatRequest:
    errors = Errors()
    model = string(body, "model", errors, required=True, blank=False, max_length=MAX_NAME_LENGTH)
    items = array(body, "messages", errors)
    if items is None and "messages" not in errors.fields:
        errors.add("messages", "This field is required.")
    elif items == []:
        errors.add("messages", "This list may not be empty.")
    messages = []
    called: dict[str, str] = {}  # tool call id → tool name, of the assistant's calls so far
    for index, item in enumerate(items or []):
        name = f"messages[{index}]"
        if not isinstance(item, dict):
            errors.add(name, "Must be a message object.")
            continue
        role = string(item, "role", errors, name=f"{name}.role", required=True)
        if role is not None and role not in OPENAI_ROLES:
            errors.add(f"{name}.role", f"Only {', '.join(OPENAI_ROLES)} are supported.")
            role = None
        content = _openai_content(item, name, errors)
        if role is None or content is None:
            continue
        message: dict[str, Any] = {"role": OPENAI_ROLES[role], "content": content}
        if role == "assistant" and item.get("tool_calls") is not None:
            calls = _openai_tool_calls(item, name, errors)
            if calls:
                message["tool_calls"] = calls
                called.update((call["id"], call["name"]) for call in calls)
        elif role == "tool":
            call_id = string(
                item, "tool_call_id", errors, name=f"{name}.tool_call_id", required=True
            )
            if call_id is not None and call_id not in called:
                errors.add(f"{name}.tool_call_id", "No earlier assistant tool call has this id.")
            message.update(tool_call_id=call_id or "", name=called.get(call_id or "", ""))
        messages.append(message)
    check_last_message(messages, "messages", errors, must_be_user=False)
    tools = tool_specs(body, errors)
    tool_choice = _openai_tool_choice(body, tools, errors)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        errors.add("parallel_tool_calls", "Must be a boolean.")

    temperature = number(
        body, "temperature", errors, minimum=TEMPERATURE[0], maximum=TEMPERATURE[1]
    )
    max_completion = integer(body, "max_completion_tokens", errors, minimum=1)
    max_tokens = integer(body, "max_tokens", errors, minimum=1)
    n = integer(body, "n", errors, minimum=1)
    if n is not None and n != 1:
        errors.add("n", "Only n=1 is supported.")
    stream = boolean(body, "stream", errors)
    options = json_object(body, "stream_options", errors) or {}
    include_usage = boolean(options, "include_usage", errors, name="stream_options.include_usage")
    string(body, "user", errors, max_length=MAX_ID_LENGTH)
    errors.raise_if_any()
    assert model is not None
    return OpenAIChatRequest(
        messages=messages,
        model=model,
        temperature=OPENAI_TEMPERATURE if temperature is None else temperature,
        max_tokens=max_completion or max_tokens,
        stream=stream,
        include_usage=include_usage,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )


def _openai_schema() -> oa.Schema:
    text_part = oa.obj(
        {"type": oa.string(choices=("text",)), "text": oa.string()}, ("type", "text")
    )
    message = oa.obj(
        {
            "role": oa.string(choices=tuple(OPENAI_ROLES)),
            "content": {
                "oneOf": [oa.string(), oa.array(text_part)],
                "nullable": True,
                "description": "Required but for an assistant's message (null: no text).",
            },
            "tool_calls": oa.array(tool_call_schema()),
            "tool_call_id": oa.string(description="A tool message's call."),
        },
        ("role",),
    )
    count = {"type": "integer", "minimum": 1, "maximum": MAX_INTEGER}
    return oa.obj(
        {
            "model": oa.string(blank=False, max_length=MAX_NAME_LENGTH, description=TIER_OR_MODEL),
            "messages": oa.array(message, minItems=1, description=last_message_note()),
            "temperature": temperature_schema(OPENAI_TEMPERATURE),
            "max_completion_tokens": count,
            "max_tokens": count,
            "n": {"type": "integer", "enum": [1]},
            "stream": {"type": "boolean", "default": False},
            "stream_options": oa.obj({"include_usage": {"type": "boolean"}}),
            "user": oa.string(max_length=MAX_ID_LENGTH),
            "tools": tools_schema(),
            "tool_choice": {
                "oneOf": [
                    oa.string(choices=TOOL_CHOICE_MODES),
                    oa.obj(
                        {
                            "type": oa.string(choices=("function",)),
                            "function": oa.obj({"name": oa.string()}, ("name",)),
                        },
                        ("function",),
                    ),
                ]
            },
            "parallel_tool_calls": {"type": "boolean"},
        },
        ("model", "messages"),
        description="Images and n > 1 are refused with 400.",
    )


def tool_call_schema() -> oa.Schema:
    return oa.obj(
        {
            "id": oa.string(),
            "type": oa.string(choices=("function",)),
            "function": oa.obj({"name": oa.string(), "arguments": oa.string()}),
        }
    )


OPENAI_REQUEST = oa.RequestBody(
    "ChatCompletionRequest",
    parse_openai_chat,
    _openai_schema,
    examples={
        "question": {"model": "cheap", "messages": [{"role": "user", "content": "Hello"}]},
        "streaming": {
            "model": "demo/balanced",
            "messages": [
                {"role": "developer", "content": "Answer briefly."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
            ],
            "temperature": 0.5,
            "max_completion_tokens": 200,
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "user-7",
        },
        "tools": {
            "model": "balanced",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Today's weather in a city.",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                }
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
            "max_tokens": 100,
        },
    },
)


def _openai_tool_choice(
    body: dict[str, Any], tools: tuple[ToolSpec, ...], errors: Errors
) -> str | None:
    """``auto``, ``none``, ``required`` or ``{"type": "function", "function": {"name"}}``
    (told as the tool's name)."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in TOOL_CHOICE_MODES:
            errors.add("tool_choice", f"Must be one of: {', '.join(TOOL_CHOICE_MODES)}, or a tool.")
            return None
        if choice == "required" and not tools:
            errors.add("tool_choice", "required needs tools.")
        return choice
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        errors.add("tool_choice", 'Must be a mode or {"type": "function", "function": {"name"}}.')
        return None
    if name not in {tool.name for tool in tools}:
        errors.add("tool_choice", f"No tool is named {name!r}.")
        return None
    return name


def _openai_tool_calls(item: dict[str, Any], name: str, errors: Errors) -> list[dict[str, str]]:
    """An assistant message's ``tool_calls`` as ``[{"id", "name", "arguments"}]``."""
    calls = []
    for index, call in enumerate(array(item, "tool_calls", errors) or []):
        call_name = f"{name}.tool_calls[{index}]"
        if not isinstance(call, dict):
            errors.add(call_name, "Must be a tool call object.")
            continue
        call_id = string(call, "id", errors, name=f"{call_name}.id", required=True, blank=False)
        function = call.get("function")
        if not isinstance(function, dict):
            errors.add(f"{call_name}.function", "Must be an object with name and arguments.")
            continue
        tool = string(function, "name", errors, name=f"{call_name}.function.name", required=True)
        arguments = string(
            function, "arguments", errors, name=f"{call_name}.function.arguments", required=True
        )
        if call_id is not None and tool is not None and arguments is not None:
            calls.append({"id": call_id, "name": tool, "arguments": arguments})
    return calls
