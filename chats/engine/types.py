"""What transports send into the engine (:class:`GenerationRequest`) and what they get
out: the events of a generation, its outcome, and the records it keeps on the way."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from billing.models import Tenant
from chatproject.errors import ApiError
from chats.models import Chat
from chats.providers import ToolSpec
from chats.tool_loop import ServerTool, ToolResult, ToolStarted

# --- What transports send in ------------------------------------------------------------

# Where a client leaves it out; a wire format whose own contract says otherwise (OpenAI's
# is 1) passes its own.
DEFAULT_TEMPERATURE = 0.7


class SystemPrompt(Protocol):
    """A system prompt the server builds for a request (a knowledge base's, say)."""

    @property
    def system_prompt(self) -> str: ...

    @property
    def client_parts(self) -> list[tuple[str, str]]:
        """What the client put into it, as (source, text): governed like its messages."""
        ...

    @property
    def folded(self) -> list[tuple[str, str]]:
        """What the server retrieved into it, as (source, text): checked for injection."""
        ...


@dataclass
class GenerationRequest:
    tenant: Tenant
    # The conversation; the last one is being answered. Assistant messages may carry
    # tool_calls, answered by role "tool" messages (see CompletionRequest).
    messages: list[dict[str, Any]]
    chat: Chat | None = None  # where the exchange is stored (None: not stored)
    # Or: opens the chat during admission, returning it and whether it made it new; a
    # refused request then leaves no new chat behind. Sync (runs in the admission's
    # transaction).
    chat_opener: Callable[[], tuple[Chat, bool]] | None = None
    quality: str | None = None
    model: str | None = None
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int | None = None
    governor_metadata: Any = None  # raw governorMetadata as the client sent it
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client_message_id: str = ""
    use_cache: bool = True  # False when the client sent Cache-Control: no-cache
    idempotency_key: str = ""  # a retry with the same key replays the stored answer
    # How many leading messages the server supplied itself (stored history it checked
    # when they were sent, or a system prompt it built): the governor checks the rest.
    trusted_messages: int = 0
    # Client-supplied text the server folded into one of those trusted messages (documents
    # quoted in a system prompt it built), as (source, text): the governor checks it too.
    client_context: list[tuple[str, str]] = field(default_factory=list)
    # Text the server retrieved into the prompt itself (knowledge-base chunks), as
    # (source, text): the governor checks it for prompt and markup injection.
    folded: list[tuple[str, str]] = field(default_factory=list)
    # Tools the client offers (it runs them itself: an answer calling them ends with
    # finish_reason "tool_calls"), and how the model may use tools.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    # Tools the server runs itself, by name, in a loop of at most TOOL_MAX_STEPS model calls.
    server_tools: dict[str, ServerTool] = field(default_factory=dict)
    # Builds the system prompt once the model is known, given the tokens the model leaves
    # after the conversation. Sync (database); may raise ApiError. It leads the messages,
    # trusted, and its client and folded parts are governed (see SystemPrompt).
    system_prompt: Callable[[int], SystemPrompt] | None = None
    # Runs on a complete answer once it is stored and settled, before its FinishedEvent,
    # which carries what it returns as ``kept`` (keeping the answer elsewhere too, say).
    # Sync (database); it reports its own refusals in what it returns.
    keep_answer: Callable[[str], Any] | None = None


def offered_tools(request: GenerationRequest) -> tuple[ToolSpec, ...]:
    """The client's tools and the server's, as the model is offered them."""
    server = tuple(tool.spec for tool in request.server_tools.values())
    return (*request.tools, *server)


# --- What transports get out ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class TokenEvent:
    text: str
    index: int


@dataclass(frozen=True, slots=True)
class FinishedEvent:
    message_id: uuid.UUID
    content: str
    finish_reason: str
    usage: Usage
    credits_charged: Decimal
    credits_remaining: Decimal
    # Every tool call of the answer, {"id", "name", "arguments"} plus "output" or "error"
    # for those the server ran; the ones without either are the client's to answer.
    tool_calls: tuple[dict[str, Any], ...] = ()
    kept: Any = None  # what the request's keep_answer returned
    status: str = "complete"  # or "cancelled": ended by Generation.stop()


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: ApiError
    message_id: uuid.UUID
    content: str  # what was generated before the failure (kept in the stored message)
    usage: Usage
    # None while not settled yet (the database was down when the stream ended).
    credits_charged: Decimal | None
    credits_remaining: Decimal | None


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A piece of a tool call: the first names it, every piece may add to its arguments.
    ``index`` numbers the calls of one model step, from 0; ``call_id`` is on every piece."""

    step: int
    index: int
    call_id: str
    name: str
    arguments: str
    first: bool


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A model step ended with server tool calls (their ToolResults came before), and
    the next step begins."""

    step: int


Event = (
    TokenEvent | ToolCallEvent | ToolStarted | ToolResult | StepEvent | FinishedEvent | ErrorEvent
)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # the stored message's status: complete, failed or cancelled
    content: str
    usage: Usage
    credits_charged: Decimal
    credits_remaining: Decimal


@dataclass(frozen=True, slots=True)
class Checkpoint:
    content: str  # the answer so far
    tokens: int  # how many tokens it is


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: uuid.UUID
    content: str
    created_at: Any
