"""Request bodies of the HTTP streaming transports, validated strictly.

No coercion: a string must be a JSON string, a number a JSON number (``true`` is not 1),
an object a JSON object. Every problem is collected, and the request is refused once
with ``VALIDATION_ERROR`` whose ``details`` name each field (``messages[2].role``).
``null`` counts as absent, as most JSON clients send it for unset options.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chatproject import openapi_fragments as oa
from chatproject.errors import ApiError, ErrorCode
from chats.catalog import DEFAULT_QUALITY, QUALITY_TIERS
from chats.providers import TOOL_CHOICE_MODES, ToolSpec

# The limits the parsers apply; the OpenAPI fragments below are built from the same ones.
ROLES = ("user", "assistant", "system")
HISTORY_ROLES = ("user", "assistant")
DOCUMENT_TYPE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_DOCUMENT_TYPE = "UNSORTED"
MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 100  # a model's or a user's name
MAX_INTEGER = 2**31 - 1  # no count in a body is larger; a database column would refuse more
TEMPERATURE = (0, 2)
AISDK_TRIGGERS = ("submit-message", "regenerate-message")
TIER_OR_MODEL = "A catalog model name, or a quality tier: " + ", ".join(
    f"`{tier}`" for tier in QUALITY_TIERS
)


class Errors:
    """Field errors collected while validating one body."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.fields.setdefault(name, []).append(message)

    def raise_if_any(self) -> None:
        if self.fields:
            first = next(iter(self.fields))
            raise ApiError(
                ErrorCode.VALIDATION_ERROR,
                f"Invalid request: {first}: {self.fields[first][0]}",
                details=self.fields,
            )


# --- Typed field readers (each returns None when the value is absent or invalid) ---------


def string(
    body: dict[str, Any],
    key: str,
    errors: Errors,
    *,
    name: str | None = None,
    required: bool = False,
    blank: bool = True,
    max_length: int | None = None,
    choices: tuple[str, ...] | None = None,
) -> str | None:
    name = name or key
    value = body.get(key)
    if value is None:
        if required:
            errors.add(name, "This field is required.")
        return None
    if not isinstance(value, str):
        errors.add(name, "Must be a string.")
        return None
    if not blank and not value.strip():
        errors.add(name, "This field may not be blank.")
        return None
    if max_length is not None and len(value) > max_length:
        errors.add(name, f"Ensure this field has no more than {max_length} characters.")
        return None
    if choices is not None and value not in choices:
        errors.add(name, f"Must be one of: {', '.join(choices)}.")
        return None
    return value


def number(
    body: dict[str, Any], key: str, errors: Errors, *, minimum: float, maximum: float
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        errors.add(key, "Must be a number.")
        return None
    if not minimum <= value <= maximum:
        errors.add(key, f"Must be between {minimum:g} and {maximum:g}.")
        return None
    return float(value)


def integer(body: dict[str, Any], key: str, errors: Errors, *, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(key, "Must be an integer.")
        return None
    if value < minimum:
        errors.add(key, f"Must be at least {minimum}.")
        return None
    if value > MAX_INTEGER:
        errors.add(key, f"Must be at most {MAX_INTEGER}.")
        return None
    return value


def boolean(body: dict[str, Any], key: str, errors: Errors, *, name: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        errors.add(name or key, "Must be a boolean.")
        return False
    return value


def json_object(body: dict[str, Any], key: str, errors: Errors) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add(key, "Must be an object.")
        return None
    return value


def array(
    body: dict[str, Any], key: str, errors: Errors, *, max_items: int | None = None
) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        errors.add(key, "Must be an array.")
        return None
    if max_items is not None and len(value) > max_items:
        errors.add(key, f"Ensure this list has no more than {max_items} items.")
        return None
    return value


def strings(body: dict[str, Any], key: str, errors: Errors) -> list[str]:
    """An array of strings (empty when absent or invalid)."""
    items = array(body, key, errors) or []
    if not all(isinstance(item, str) for item in items):
        errors.add(key, "Must be an array of strings.")
        return []
    return items


def role_content_messages(
    items: list[Any], key: str, errors: Errors, *, roles: tuple[str, ...]
) -> list[dict[str, str]]:
    """``[{role, content}]`` with string content, as /api/ai/chat and /api/v1/chat/* take them."""
    messages = []
    for index, item in enumerate(items):
        name = f"{key}[{index}]"
        if not isinstance(item, dict):
            errors.add(name, "Must be an object with role and content.")
            continue
        role = string(item, "role", errors, name=f"{name}.role", required=True, choices=roles)
        content = string(item, "content", errors, name=f"{name}.content", required=True)
        if role is not None and content is not None:
            messages.append({"role": role, "content": content})
    return messages


def _check_last_message(
    messages: list[dict[str, str]], key: str, errors: Errors, *, must_be_user: bool
) -> None:
    if not messages:
        return
    last = messages[-1]
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    name = f"{key}[{len(messages) - 1}]"
    if must_be_user and last["role"] != "user":
        errors.add(f"{name}.role", "The last message must be the user's.")
    if len(last["content"]) > limit:
        errors.add(f"{name}.content", f"Ensure this field has no more than {limit} characters.")


def _role_content_schema(roles: tuple[str, ...], **extra: Any) -> oa.Schema:
    item = oa.obj({"role": oa.string(choices=roles), "content": oa.string()}, ("role", "content"))
    return oa.array(item, **extra)


def _temperature_schema(default: float) -> oa.Schema:
    low, high = TEMPERATURE
    return {"type": "number", "minimum": low, "maximum": high, "default": default}


def _last_message_note() -> str:
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    return f"The last message's content is at most {limit} characters."


# --- POST /api/ai/chat and /api/ai/chat/complete -----------------------------------------

REGPILOT_TEMPERATURE = 0.7


@dataclass(frozen=True)
class RegPilotRequest:
    messages: list[dict[str, str]]
    quality: str | None
    temperature: float
    model: str | None
    governor_metadata: dict[str, Any] | None


def parse_regpilot(body: dict[str, Any]) -> RegPilotRequest:
    errors = Errors()
    items = array(body, "messages", errors)
    if items is None and "messages" not in errors.fields:
        errors.add("messages", "This field is required.")
    elif items == []:
        errors.add("messages", "This list may not be empty.")
    messages = role_content_messages(items or [], "messages", errors, roles=ROLES)
    _check_last_message(messages, "messages", errors, must_be_user=False)
    quality = string(body, "quality", errors, choices=QUALITY_TIERS)
    temperature = number(
        body, "temperature", errors, minimum=TEMPERATURE[0], maximum=TEMPERATURE[1]
    )
    model = string(body, "model", errors, blank=False, max_length=MAX_NAME_LENGTH)
    governor_metadata = json_object(body, "governorMetadata", errors)
    errors.raise_if_any()
    return RegPilotRequest(
        messages=messages,
        quality=quality,
        temperature=REGPILOT_TEMPERATURE if temperature is None else temperature,
        model=model,
        governor_metadata=governor_metadata,
    )


def _regpilot_schema() -> oa.Schema:
    return oa.obj(
        {
            "messages": _role_content_schema(ROLES, minItems=1, description=_last_message_note()),
            "quality": oa.string(choices=QUALITY_TIERS, default=DEFAULT_QUALITY),
            "temperature": _temperature_schema(REGPILOT_TEMPERATURE),
            "model": oa.string(
                blank=False,
                max_length=MAX_NAME_LENGTH,
                description="Overrides the quality routing.",
            ),
            "governorMetadata": oa.ref("GovernorMetadata"),
        },
        ("messages",),
    )


REGPILOT_REQUEST = oa.RequestBody(
    "AiChatRequest",
    parse_regpilot,
    _regpilot_schema,
    examples={
        "question": {"messages": [{"role": "user", "content": "What is a credit?"}]},
        "routed": {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi. How can I help?"},
                {"role": "user", "content": "Summarise our refund policy."},
            ],
            "quality": "cheap",
            "temperature": 0.2,
            "governorMetadata": {"actionType": "customer_support", "senderId": "user_12345"},
        },
    },
)


# --- POST /api/v1/chat/stream and the older /api/v1/chat/generate ------------------------


@dataclass(frozen=True)
class DocChatRequest:
    message: str
    conversation_id: str | None
    project_id: str | None
    user_name: str | None
    document_type: str
    history: list[dict[str, str]]
    existing_documents: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    save_as: str | None = None  # metadata.save_as: where the answer is kept, if anywhere


def _doc_common(body: dict[str, Any], errors: Errors) -> tuple[str | None, str, list]:
    message = string(
        body,
        "message",
        errors,
        required=True,
        blank=False,
        max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
    )
    document_type = string(body, "document_type", errors, blank=False)
    if document_type is not None and not DOCUMENT_TYPE.match(document_type):
        errors.add("document_type", "Use 1 to 64 letters, digits, '_', '.' or '-'.")
    items = array(body, "history", errors, max_items=settings.CHAT_MAX_HISTORY_MESSAGES)
    history = role_content_messages(items or [], "history", errors, roles=HISTORY_ROLES)
    return message, document_type or DEFAULT_DOCUMENT_TYPE, history


def _doc_common_schema() -> oa.Schema:
    return {
        "message": oa.string(blank=False, max_length=settings.CHAT_MAX_MESSAGE_LENGTH),
        "document_type": oa.string(
            blank=False, pattern=DOCUMENT_TYPE.pattern, default=DEFAULT_DOCUMENT_TYPE
        ),
        "history": _role_content_schema(HISTORY_ROLES, maxItems=settings.CHAT_MAX_HISTORY_MESSAGES),
    }


def parse_doc_chat(body: dict[str, Any]) -> DocChatRequest:
    errors = Errors()
    message, document_type, history = _doc_common(body, errors)
    conversation_id = string(body, "conversation_id", errors, blank=False, max_length=MAX_ID_LENGTH)
    project_id = string(body, "project_id", errors, blank=False, max_length=MAX_ID_LENGTH)
    user_name = string(body, "user_name", errors, max_length=MAX_NAME_LENGTH)
    documents = json_object(body, "existing_documents", errors) or {}
    for path, content in documents.items():
        if not isinstance(content, str):
            errors.add(f"existing_documents.{path}", "Must be a string (the file's content).")
    metadata = json_object(body, "metadata", errors) or {}
    save_as = metadata.get("save_as")
    if save_as is not None:
        if not isinstance(save_as, str) or not save_as.strip():
            errors.add("metadata.save_as", "Must be a non-empty document path.")
        elif not project_id:
            errors.add("metadata.save_as", "Saving a generated document needs a project_id.")
    errors.raise_if_any()
    assert message is not None
    return DocChatRequest(
        message=message,
        conversation_id=conversation_id,
        project_id=project_id,
        user_name=user_name or None,
        document_type=document_type,
        history=history,
        existing_documents=documents,
        metadata=metadata,
        save_as=save_as.strip() if save_as is not None else None,
    )


def _doc_chat_schema() -> oa.Schema:
    key = oa.string(blank=False, max_length=MAX_ID_LENGTH)
    return oa.obj(
        {
            **_doc_common_schema(),
            "conversation_id": {**key, "description": "Any key; the same key continues the chat."},
            "project_id": key,
            "user_name": oa.string(max_length=MAX_NAME_LENGTH),
            "existing_documents": {
                "type": "object",
                "additionalProperties": oa.string(),
                "description": "Path → content.",
            },
            "metadata": {"type": "object"},
        },
        ("message",),
    )


DOC_CHAT_REQUEST = oa.RequestBody(
    "DocChatRequest",
    parse_doc_chat,
    _doc_chat_schema,
    examples={
        "question": {"message": "What does the onboarding guide say about keys?"},
        "project": {
            "message": "Draft the security section.",
            "conversation_id": "handbook-42",
            "project_id": "handbook",
            "user_name": "Ada",
            "document_type": "SPEC",
            "history": [
                {"role": "user", "content": "We are writing the handbook."},
                {"role": "assistant", "content": "Which section first?"},
            ],
            "existing_documents": {"docs/intro.md": "# Intro"},
            "metadata": {"source": "editor"},
        },
    },
)


@dataclass(frozen=True)
class DocGenerateRequest:
    message: str
    document_type: str
    history: list[dict[str, str]]
    metadata: dict[str, Any]

    @property
    def project_id(self) -> str | None:
        value = self.metadata.get("project_id")
        return value if isinstance(value, str) and value else None


def parse_doc_generate(body: dict[str, Any]) -> DocGenerateRequest:
    errors = Errors()
    message, document_type, history = _doc_common(body, errors)
    metadata = json_object(body, "metadata", errors) or {}
    errors.raise_if_any()
    assert message is not None
    return DocGenerateRequest(
        message=message, document_type=document_type, history=history, metadata=metadata
    )


def _doc_generate_schema() -> oa.Schema:
    return oa.obj(
        {**_doc_common_schema(), "metadata": oa.obj({"project_id": oa.string()})}, ("message",)
    )


DOC_GENERATE_REQUEST = oa.RequestBody(
    "DocGenerateRequest",
    parse_doc_generate,
    _doc_generate_schema,
    examples={
        "question": {"message": "Write a release note."},
        "project": {
            "message": "Write a release note.",
            "document_type": "NOTES",
            "history": [{"role": "user", "content": "Version 2 is out."}],
            "metadata": {"project_id": "handbook"},
        },
    },
)


# --- POST /api/chat (the Vercel AI SDK) --------------------------------------------------


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
    _check_last_message(messages, "messages", errors, must_be_user=False)
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
                "assistant messages. " + _last_message_note(),
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
            "tools": _tools_schema(),
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


# --- POST /v1/chat/completions (OpenAI) ----------------------------------------------------

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
    _check_last_message(messages, "messages", errors, must_be_user=False)
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
            "messages": oa.array(message, minItems=1, description=_last_message_note()),
            "temperature": _temperature_schema(OPENAI_TEMPERATURE),
            "max_completion_tokens": count,
            "max_tokens": count,
            "n": {"type": "integer", "enum": [1]},
            "stream": {"type": "boolean", "default": False},
            "stream_options": oa.obj({"include_usage": {"type": "boolean"}}),
            "user": oa.string(max_length=MAX_ID_LENGTH),
            "tools": _tools_schema(),
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


TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128


def tool_specs(body: dict[str, Any], errors: Errors, key: str = "tools") -> tuple[ToolSpec, ...]:
    """OpenAI's ``tools``: ``[{"type": "function", "function": {"name", "description",
    "parameters"}}]``."""
    items = array(body, key, errors, max_items=MAX_TOOLS) or []
    specs: list[ToolSpec] = []
    for index, item in enumerate(items):
        name = f"{key}[{index}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            errors.add(name, 'Must be {"type": "function", "function": {...}}.')
            continue
        function = json_object(item, "function", errors)
        if function is None:
            errors.add(f"{name}.function", "This field is required.")
            continue
        tool_name = string(function, "name", errors, name=f"{name}.function.name", required=True)
        if tool_name is not None and not TOOL_NAME.match(tool_name):
            errors.add(f"{name}.function.name", "Use 1 to 64 letters, digits, '_' or '-'.")
            tool_name = None
        description = string(function, "description", errors, name=f"{name}.function.description")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            errors.add(f"{name}.function.parameters", "Must be a JSON schema object.")
        if tool_name in {spec.name for spec in specs}:
            errors.add(f"{name}.function.name", "Another tool has this name.")
        elif tool_name is not None:
            specs.append(ToolSpec(tool_name, description or "", parameters or {"type": "object"}))
    return tuple(specs)


def _tools_schema() -> oa.Schema:
    function = oa.obj(
        {
            "name": oa.string(pattern=TOOL_NAME.pattern),
            "description": oa.string(),
            "parameters": {"type": "object", "description": "A JSON schema."},
        },
        ("name",),
    )
    tool = oa.obj(
        {"type": oa.string(choices=("function",), default="function"), "function": function},
        ("function",),
    )
    return oa.array(
        tool, maxItems=MAX_TOOLS, description="Functions the client runs itself (OpenAI's format)."
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


# --- /ws/chat: client messages ------------------------------------------------------------

WS_MESSAGE_TYPES = ("message", "resume", "cancel", "ping")
MAX_CLIENT_MESSAGE_ID_LENGTH = 100  # Message.client_message_id


def parse_ws_frame(value: Any) -> tuple[str, dict[str, Any]]:
    """A client message's type (``message`` when it names none) and its fields."""
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.VALIDATION_ERROR, "The message must be a JSON object.")
    kind = value.get("type", "message")
    if kind not in WS_MESSAGE_TYPES:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Unknown message type {kind!r}.",
            details={"type": ["Use message (default), resume, cancel or ping."]},
        )
    return kind, value


@dataclass(frozen=True)
class WsChatMessage:
    """``{"content": ...}``, with the options HTTP clients send in their bodies and
    headers (``cacheControl`` and ``idempotencyKey`` mean what the ``Cache-Control`` and
    ``Idempotency-Key`` headers mean)."""

    content: str
    exclude_tools: list[str] = field(default_factory=list)
    quality: str | None = None
    model: str | None = None
    temperature: float | None = None
    governor_metadata: dict[str, Any] | None = None
    client_message_id: str | None = None
    cache_control: str | None = None
    idempotency_key: str | None = None

    def options(self) -> dict[str, Any]:
        """The GenerationRequest options (None: the engine's default)."""
        return {
            "quality": self.quality,
            "model": self.model,
            "temperature": self.temperature,
            "governor_metadata": self.governor_metadata,
            "client_message_id": self.client_message_id,
            "cache_control": self.cache_control or "",
            "idempotency_key": self.idempotency_key or "",
        }


def parse_ws_message(body: dict[str, Any]) -> WsChatMessage:
    errors = Errors()
    limit = settings.CHAT_MAX_MESSAGE_LENGTH
    content = string(body, "content", errors, required=True, blank=False, max_length=limit)
    message = WsChatMessage(
        content=content or "",
        exclude_tools=strings(body, "excludeTools", errors),
        quality=string(body, "quality", errors),
        model=string(body, "model", errors),
        temperature=number(body, "temperature", errors, minimum=0, maximum=2),
        governor_metadata=json_object(body, "governorMetadata", errors),
        client_message_id=string(
            body, "client_message_id", errors, max_length=MAX_CLIENT_MESSAGE_ID_LENGTH
        ),
        cache_control=string(body, "cacheControl", errors, max_length=MAX_ID_LENGTH),
        idempotency_key=string(
            body, "idempotencyKey", errors, blank=False, max_length=MAX_ID_LENGTH
        ),
    )
    errors.raise_if_any()
    return message


def parse_ws_resume(body: dict[str, Any]) -> tuple[str, int]:
    """``{"type": "resume", "message_id", "after_index"}``: the answer's stream log id
    and the index of the last token the client had (-1: none)."""
    errors = Errors()
    message_id = string(body, "message_id", errors, required=True, max_length=64)
    log_id = None
    if message_id is not None:
        try:
            log_id = uuid.UUID(message_id).hex
        except ValueError:
            errors.add("message_id", "Must be the id of an answer (message_stream_started).")
    after = integer(body, "after_index", errors, minimum=-1)
    errors.raise_if_any()
    assert log_id is not None
    return log_id, -1 if after is None else after
