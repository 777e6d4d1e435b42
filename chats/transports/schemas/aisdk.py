"""The body of ``POST /api/chat`` (the Vercel AI SDK's ``UIMessage``s, or a prompt):
its parser and its OpenAPI schema."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from chatproject import openapi_fragments as oa
from chats.providers import ToolSpec
from chats.transports.schemas.readers import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    ROLES,
    TIER_OR_MODEL,
    Errors,
    array,
    check_last_message,
    last_message_note,
    string,
    strings,
)
from chats.transports.schemas.tools import TOOL_NAME, tool_specs, tools_schema

AISDK_TRIGGERS = ("submit-message", "regenerate-message")


@dataclass(frozen=True)
class AiSdkRequest:
    messages: list[dict[str, Any]]
    room_id: uuid.UUID | None  # roomId: the id of a chat of the tenant
    chat_key: str | None  # DefaultChatTransport's chat id (any string the client made up)
    model: str | None
    artist_id: str | None
    exclude_tools: list[str]
    tools: tuple[ToolSpec, ...] = ()  # the client's own tools (OpenAI's format)
    project_id: str | None = None  # the project whose knowledge base search_knowledge reads

    @property
    def title(self) -> str:
        """A new chat's title: the first user message."""
        first = next((m for m in self.messages if m["role"] == "user"), self.messages[-1])
        return first["content"][:100]


def _ui_parts(item: dict[str, Any], name: str, errors: Errors) -> tuple[str, list[Any]] | None:
    """(the name of its parts, the parts) of a UIMessage; a ``content`` string is one text
    part."""
    parts = item.get("parts")
    if parts is None:
        parts = item.get("content")
        if isinstance(parts, str):
            return f"{name}.content", [{"type": "text", "text": parts}]
        name_of_parts = f"{name}.content"
        if parts is None:
            errors.add(f"{name}.parts", "This field is required.")
            return None
    else:
        name_of_parts = f"{name}.parts"
    if not isinstance(parts, list):
        errors.add(name_of_parts, "Must be an array of parts.")
        return None
    return name_of_parts, parts


def _ui_message(item: dict[str, Any], role: str, name: str, errors: Errors) -> list[dict[str, Any]]:
    """A UIMessage as provider messages: its text, and for an assistant message its
    answered tool parts (``tool-<name>`` or ``dynamic-tool``) as tool calls and results,
    one assistant message per step. Parts of other types (reasoning, file, source-*,
    data-*) carry nothing for the model here and are skipped."""
    found = _ui_parts(item, name, errors)
    if found is None:
        return []
    name_of_parts, parts = found
    messages: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []

    def close_step() -> None:
        if not texts and not calls:
            return
        message: dict[str, Any] = {"role": role, "content": "".join(texts)}
        answered = [call for call in calls if "result" in call]
        if answered:
            message["tool_calls"] = [
                {key: call[key] for key in ("id", "name", "arguments")} for call in answered
            ]
        if message["content"] or answered:
            messages.append(message)
        messages.extend(call["result"] for call in answered)
        texts.clear()
        calls.clear()

    for index, part in enumerate(parts):
        part_name = f"{name_of_parts}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            errors.add(part_name, "Must be an object with a string type.")
            continue
        kind = part["type"]
        if kind == "text":
            text = string(part, "text", errors, name=f"{part_name}.text", required=True)
            if text is not None:
                if calls:  # text after the step's tool calls starts the next turn
                    close_step()
                texts.append(text)
        elif kind == "step-start":
            close_step()
        elif role == "assistant" and (kind.startswith("tool-") or kind == "dynamic-tool"):
            call = _ui_tool_part(part, part_name, errors)
            if call is not None:
                calls.append(call)
    close_step()
    return messages


def _ui_tool_part(part: dict[str, Any], name: str, errors: Errors) -> dict[str, Any] | None:
    """A tool part as a call (with its result, once it has one)."""
    kind = part["type"]
    tool = part.get("toolName") if kind == "dynamic-tool" else kind.removeprefix("tool-")
    call_id = string(part, "toolCallId", errors, name=f"{name}.toolCallId", required=True)
    if not isinstance(tool, str) or not TOOL_NAME.match(tool):
        errors.add(f"{name}.type", "Must name a tool: tool-<name>, or dynamic-tool with toolName.")
        return None
    if call_id is None:
        return None
    call: dict[str, Any] = {
        "id": call_id,
        "name": tool,
        "arguments": json.dumps(part.get("input") if part.get("input") is not None else {}),
    }
    state = part.get("state")
    if state == "output-available":
        output = part.get("output")
        content = output if isinstance(output, str) else json.dumps(output)
    elif state == "output-error":
        content = json.dumps({"error": str(part.get("errorText") or "The tool failed.")})
    else:
        return call  # no result yet (input-streaming, input-available, approval...)
    call["result"] = {"role": "tool", "tool_call_id": call_id, "name": tool, "content": content}
    return call


def parse_aisdk(body: dict[str, Any]) -> AiSdkRequest:
    errors = Errors()
    has_prompt = body.get("prompt") is not None
    has_messages = body.get("messages") is not None
    messages: list[dict[str, str]] = []
    if has_prompt == has_messages:
        errors.add("prompt", "Provide exactly one of prompt or messages.")
    elif has_prompt:
        prompt = string(body, "prompt", errors, blank=False)
        if prompt is not None:
            messages = [{"role": "user", "content": prompt}]
    else:
        items = array(body, "messages", errors) or []
        if not items and "messages" not in errors.fields:
            errors.add("messages", "This list may not be empty.")
        for index, item in enumerate(items):
            name = f"messages[{index}]"
            if not isinstance(item, dict):
                errors.add(name, "Must be a UIMessage object.")
                continue
            role = string(item, "role", errors, name=f"{name}.role", required=True, choices=ROLES)
            if role is not None:
                messages.extend(_ui_message(item, role, name, errors))
        if items and not errors.fields and not messages:
            errors.add("messages", "No message has any text.")
    check_last_message(messages, "messages", errors, must_be_user=False)
    if messages and messages[-1]["role"] not in ("user", "tool"):
        errors.add(
            f"messages[{len(items or []) - 1}].role",
            "The last message must be the user's, or the assistant's with tool results.",
        )

    room_id = None
    raw_room = string(body, "roomId", errors, blank=False)
    if raw_room is not None:
        try:
            room_id = uuid.UUID(raw_room)
        except ValueError:
            errors.add("roomId", "Must be a UUID.")
    chat_key = string(body, "id", errors, blank=False, max_length=MAX_ID_LENGTH)
    string(body, "trigger", errors, choices=AISDK_TRIGGERS)
    model = string(body, "model", errors, blank=False, max_length=MAX_NAME_LENGTH)
    artist_id = string(body, "artistId", errors, max_length=MAX_ID_LENGTH)
    excluded = strings(body, "excludeTools", errors)
    tools = tool_specs(body, errors)
    project_id = string(body, "projectId", errors, blank=False, max_length=MAX_ID_LENGTH)
    errors.raise_if_any()
    return AiSdkRequest(
        messages=messages,
        room_id=room_id,
        chat_key=chat_key,
        model=model,
        artist_id=artist_id or None,
        exclude_tools=excluded,
        tools=tools,
        project_id=project_id,
    )


def _aisdk_schema() -> oa.Schema:
    part = oa.obj(
        {
            "type": oa.string(
                description="`text`, `step-start`, or an assistant's `tool-<name>` or "
                "`dynamic-tool`; other types are skipped."
            ),
            "text": oa.string(description="A text part's text."),
            "toolCallId": oa.string(),
            "toolName": oa.string(description="A `dynamic-tool` part's tool."),
            "state": oa.string(description="`output-available` or `output-error` carry a result."),
            "input": {},
            "output": {},
            "errorText": oa.string(),
        },
        ("type",),
    )
    message = oa.obj(
        {
            "id": oa.string(),
            "role": oa.string(choices=ROLES),
            "parts": oa.array(part),
            "content": {
                "oneOf": [oa.string(), oa.array(part)],
                "description": "Instead of `parts`: a string is one text part.",
            },
        },
        ("role",),
        anyOf=[{"required": ["parts"]}, {"required": ["content"]}],
    )
    key = oa.string(blank=False, max_length=MAX_ID_LENGTH)
    return oa.obj(
        {
            "prompt": oa.string(blank=False),
            "messages": oa.array(
                message,
                minItems=1,
                description="AI SDK `UIMessage`s: their text parts, and the tool parts of "
                "assistant messages. " + last_message_note(),
            ),
            "roomId": oa.string(format="uuid", description="The chat; created when absent."),
            "id": {**key, "description": "DefaultChatTransport's chat id, used without roomId."},
            "trigger": oa.string(choices=AISDK_TRIGGERS),
            "model": oa.string(blank=False, max_length=MAX_NAME_LENGTH, description=TIER_OR_MODEL),
            "artistId": oa.string(max_length=MAX_ID_LENGTH),
            "excludeTools": oa.array(
                oa.string(), description="Tools not to offer; unknown names are ignored."
            ),
            "projectId": {**key, "description": "A project the model may `search_knowledge`."},
            "tools": tools_schema(),
        },
        oneOf=[{"required": ["prompt"]}, {"required": ["messages"]}],
        description="Exactly one of `prompt` and `messages`.",
    )


AISDK_REQUEST = oa.RequestBody(
    "AiSdkChatRequest",
    parse_aisdk,
    _aisdk_schema,
    examples={
        "prompt": {"prompt": "Hello"},
        "useChat": {
            "id": "my-chat",
            "trigger": "submit-message",
            "messages": [
                {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hello"}]},
                {"id": "m2", "role": "assistant", "parts": [{"type": "text", "text": "Hi!"}]},
                {"id": "m3", "role": "user", "parts": [{"type": "text", "text": "A haiku?"}]},
            ],
            "model": "cheap",
        },
        "content": {
            "roomId": "5f0c1e52-0d4b-4c43-9a59-2f4c6b1e8a10",
            "messages": [{"role": "user", "content": "Hello"}],
        },
        "toolResult": {
            "messages": [
                {"role": "user", "parts": [{"type": "text", "text": "Weather in Paris?"}]},
                {
                    "role": "assistant",
                    "parts": [
                        {
                            "type": "tool-weather",
                            "toolCallId": "call_1",
                            "state": "output-available",
                            "input": {"city": "Paris"},
                            "output": {"celsius": 21},
                        }
                    ],
                },
            ],
            "tools": [{"type": "function", "function": {"name": "weather"}}],
            "excludeTools": ["search_knowledge"],
        },
    },
)
