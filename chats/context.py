"""Context window management: fit a conversation into a model's prompt budget."""

from chats.providers import estimate_prompt_tokens


def trim_to_budget(messages: list[dict[str, str]], budget_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest non-system messages until the prompt fits ``budget_tokens``.

    System messages and the last message (the one being answered) are always kept, so a
    single over-long message is sent as it is and left to the provider to refuse.
    """
    kept = list(messages)
    while estimate_prompt_tokens(kept) > budget_tokens:
        index = next(
            (i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"),
            None,
        )
        if index is None:
            break
        del kept[index]
    return kept
