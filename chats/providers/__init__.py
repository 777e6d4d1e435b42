"""LLM providers behind one small async interface (see `base`)."""

from .anthropic import AnthropicProvider
from .base import (
    TOOL_CHOICE_MODES,
    CompletionRequest,
    LLMConnectionError,
    LLMProviderError,
    LLMTimeoutError,
    Provider,
    ProviderError,
    StreamEnd,
    StreamItem,
    TokenDelta,
    ToolCallDelta,
    ToolCalls,
    ToolSpec,
)
from .demo import DemoProvider
from .http_client import aclose_shared_client
from .openai_compat import OpenAICompatibleProvider
from .registry import ProviderKind, Upstream, provider_choices, provider_kind
from .tokens import estimate_prompt_tokens, estimate_tokens, message_text

__all__ = [
    "TOOL_CHOICE_MODES",
    "AnthropicProvider",
    "CompletionRequest",
    "DemoProvider",
    "LLMConnectionError",
    "LLMProviderError",
    "LLMTimeoutError",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderError",
    "ProviderKind",
    "StreamEnd",
    "StreamItem",
    "TokenDelta",
    "ToolCallDelta",
    "ToolCalls",
    "ToolSpec",
    "Upstream",
    "aclose_shared_client",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "message_text",
    "provider_choices",
    "provider_kind",
]
