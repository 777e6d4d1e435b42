"""The client's own tools in OpenAI's ``tools`` format, as /api/chat and
/v1/chat/completions take them."""

from __future__ import annotations

import re
from typing import Any

from chatproject import openapi_fragments as oa
from chats.providers import ToolSpec
from chats.transports.schemas.readers import Errors, array, json_object, string

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


def tools_schema() -> oa.Schema:
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
