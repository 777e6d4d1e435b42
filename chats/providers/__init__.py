"""LLM providers behind one small async interface (see `base`)."""

from .anthropic import AnthropicProvider
from .base import (
    CompletionRequest,
    LLMConnectionError,
    LLMProviderError,
    LLMTimeoutError,
    Provider,
    ProviderError,
    StreamEnd,
    StreamItem,
    TokenDelta,
    aclose_shared_client,
    estimate_prompt_tokens,
    estimate_tokens,
)
from .demo import DemoProvider
from .openai_compat import OpenAICompatibleProvider

__all__ = [
    "AnthropicProvider",
    "CompletionRequest",
    "DemoProvider",
    "LLMConnectionError",
    "LLMProviderError",
    "LLMTimeoutError",
    "OpenAICompatibleProvider",
    "Provider",
    "ProviderError",
    "StreamEnd",
    "StreamItem",
    "TokenDelta",
    "aclose_shared_client",
    "estimate_prompt_tokens",
    "estimate_tokens",
]
