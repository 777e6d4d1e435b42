"""Context window management: fit a conversation into a model's prompt budget."""

from typing import Any

from chats.providers import estimate_prompt_tokens


def trim_to_budget(messages: list[dict[str, Any]], budget_tokens: int) -> list[dict[str, Any]]:
    """Drop the oldest non-system messages until the prompt fits ``budget_tokens``.

    System messages and the last message (the one being answered) are always kept, so a
    single over-long message is sent as it is and left to the provider to refuse. Tool
    results go with the tool calls they answer (providers refuse them alone).
    """
    kept = _answered_only(messages)
    while estimate_prompt_tokens(kept) > budget_tokens:
        index = next(
            (i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"),
            None,
        )
        if index is None:
            break
        del kept[index]
        while index < len(kept) - 1 and kept[index].get("role") == "tool":
            del kept[index]
    return kept


def _answered_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without tool results whose call is not in the conversation (history cut short)."""
    called: set[str] = set()
    kept = []
    for message in messages:
        if calls := message.get("tool_calls"):
            called.update(call["id"] for call in calls)
        if message.get("role") != "tool" or message.get("tool_call_id") in called:
            kept.append(message)
    return kept
