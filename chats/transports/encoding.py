"""Values as the transports write them: compact UTF-8 JSON, credit amounts as header
text or JSON numbers."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import orjson


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (orjson: a tenth of the json module's time)."""
    return orjson.dumps(value, default=_json_default)


def to_json(value: Any) -> str:
    return json_bytes(value).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def credits_text(value: Decimal | None) -> str:
    """A credit amount for a header: plain decimal notation, no trailing zeros."""
    if value is None:
        return ""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def credits_number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
