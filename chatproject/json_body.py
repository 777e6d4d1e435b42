"""The one JSON reader of every request body and WebSocket message.

What it refuses, as ``VALIDATION_ERROR`` (413 for a body over ``MAX_REQUEST_BYTES``):

- nesting deeper than :data:`MAX_DEPTH`, found by a byte scan *before* parsing: Python's
  parser recurses, and a body nested thousands deep ends in ``RecursionError`` (a 500)
  instead of an answer;
- ``NaN``, ``Infinity`` and numbers too large for a float (``1e400``), which are not JSON;
- strings (keys included) with NUL characters or unpaired surrogates, which no database
  column and no UTF-8 encoder takes.

On a normal body the checks are a few C-speed passes over the bytes: the depth is worked
out (strings told apart from structure) only when the body has more opening brackets than
the limit, and the parsed strings are walked only when the raw body holds an escape that
could decode to a refused character.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from chatproject.errors import ApiError, ErrorCode, payload_too_large

MAX_DEPTH = 64

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_OPENINGS = bytes(b for b in range(256) if b not in b"[{")
_STEP = [0] * 256
for _open, _close in (b"[]", b"{}"):
    _STEP[_open], _STEP[_close] = 1, -1
# What could decode to NUL or a lone surrogate: the escapes, and UTF-8-encoded surrogates
# (which json.loads lets through, decoding bytes with "surrogatepass").
_SUSPECT = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_REFUSED_CHARACTER = re.compile("[\x00\ud800-\udfff]")
REFUSED_STRING = "Must not contain NUL characters or unpaired surrogates."


def nesting_depth_exceeds(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``limit`` deep."""
    if len(raw.translate(None, _NOT_OPENINGS)) <= limit:  # no deeper than it has openings
        return False
    # The brackets outside strings: with the escaped backslashes and quotes taken out,
    # every quote left opens or closes a string.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    return _deepest(outside.translate(None, _NOT_BRACKETS)) > limit


def _deepest(brackets: bytes) -> int:
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _may_hold_refused(data: bytes) -> bool:
    if b"\xed" not in data and (b"\\" not in data or b"\\u" not in data):  # fast scans
        return False
    return _SUSPECT.search(data) is not None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"Number {text[:40]} is too large.")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON.")


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def refused_string_at(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string in ``value`` holding a NUL
    character or an unpaired surrogate, or None."""
    if isinstance(value, str):
        return (path or "body") if _REFUSED_CHARACTER.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else key
            if _REFUSED_CHARACTER.search(key):
                return path or "body"
            found = refused_string_at(item, name)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = refused_string_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _invalid(message: str, field: str, problem: str) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, message, details={field: [problem]})


def parse_json(raw: bytes | str, *, what: str = "request body") -> Any:
    """``raw`` parsed, or VALIDATION_ERROR naming what is wrong (``what`` in the message)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if nesting_depth_exceeds(data):
        raise _invalid(
            f"The {what} nests more than {MAX_DEPTH} levels deep.",
            "body",
            f"At most {MAX_DEPTH} levels of arrays and objects.",
        )
    try:
        value = _DECODER.decode(data.decode(json.detect_encoding(data), "surrogatepass"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _invalid(f"The {what} is not valid JSON.", "body", str(exc)[:200]) from None
    if _may_hold_refused(data):
        field = refused_string_at(value)
        if field is not None:
            raise _invalid(f"Invalid {what}: {field}: {REFUSED_STRING}", field, REFUSED_STRING)
    return value


def request_body(request: HttpRequest) -> bytes:
    """The raw body, or 413 past ``MAX_REQUEST_BYTES`` (``DATA_UPLOAD_MAX_MEMORY_SIZE``)."""
    try:
        return request.body
    except RequestDataTooBig:
        raise payload_too_large() from None


def read_json(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object; anything else is a VALIDATION_ERROR."""
    raw = request_body(request)
    if not raw.strip():
        raise _invalid(
            "The request body is empty; send a JSON object.", "body", "This field is required."
        )
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.", "body", "Must be an object.")
    return body
