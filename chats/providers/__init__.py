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
    aclose_shared_client,
    estimate_prompt_tokens,
    estimate_tokens,
    message_text,
)
from .demo import DemoProvider
from .openai_compat import OpenAICompatibleProvider
from .registry import ProviderKind, Upstream, provider_choices, provider_kind

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
