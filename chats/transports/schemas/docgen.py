"""The bodies of ``POST /api/v1/chat/stream`` and the older ``/api/v1/chat/generate``:
their parsers and their OpenAPI schemas."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chatproject import openapi_fragments as oa
from chats.transports.schemas.readers import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    Errors,
    array,
    json_object,
    role_content_messages,
    role_content_schema,
    string,
)

HISTORY_ROLES = ("user", "assistant")
DOCUMENT_TYPE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_DOCUMENT_TYPE = "UNSORTED"


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
        "history": role_content_schema(HISTORY_ROLES, maxItems=settings.CHAT_MAX_HISTORY_MESSAGES),
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
