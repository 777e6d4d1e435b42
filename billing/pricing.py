"""What a request costs, in credits. Pure functions of the model's prices and token counts."""

from decimal import ROUND_UP, Decimal

QUANTUM = Decimal("0.000001")  # the ledger's precision
_THOUSAND = Decimal(1000)


def cost(
    *,
    input_price_per_1k: Decimal,
    output_price_per_1k: Decimal,
    prompt_tokens: int,
    completion_tokens: int,
) -> Decimal:
    """Credits for the tokens, rounded up to the ledger's precision (never undercharged).

    The hold for a request is this cost with ``completion_tokens`` at the most the request
    may generate; the charge is this cost for what it did generate.
    """
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("Token counts cannot be negative.")
    raw = (
        Decimal(prompt_tokens) * Decimal(input_price_per_1k)
        + Decimal(completion_tokens) * Decimal(output_price_per_1k)
    ) / _THOUSAND
    return raw.quantize(QUANTUM, rounding=ROUND_UP)
