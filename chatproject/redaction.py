"""API keys out of log lines: whatever a client sends, no log line carries a whole key.

Applied by the log formatter to every line (tracebacks included) and by the access log
to every request line: a key in a query string (``?api_key=``), in an ``X-API-Key`` or
``Authorization`` header echoed into a message, or anywhere in the shape of this
product's keys (``sk_<env>_<random>``).
"""

import logging
import re

REDACTED = "[REDACTED]"

# (a literal every match holds, in lower case; the pattern; its replacement). No word
# boundaries: "my_api_key=" and "user_sk_live_..." are caught too (over-redacting a log
# line costs nothing).
_PATTERNS = (
    # ?api_key=..., &key=..., token=... (query strings, form bodies, URLs in messages)
    (
        ("key=", "token="),
        re.compile(r"(?i)((?:api[_-]?)?key|(?:access[_-]?)?token)=[^&\s\"'#]+"),
        rf"\1={REDACTED}",
    ),
    # X-API-Key: ..., 'x-api-key': '...'
    (
        ("x-api-key",),
        re.compile(r"(?i)(x-api-key['\"]?\s*[:=,]\s*['\"]?)[^\s'\",;]+"),
        rf"\1{REDACTED}",
    ),
    (("bearer",), re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+"), rf"\1{REDACTED}"),
    # This product's keys wherever they are: sk_<env>_<random>.
    (("sk_",), re.compile(r"(sk_[A-Za-z0-9]{1,16}_)[A-Za-z0-9_-]{8,}"), rf"\1{REDACTED}"),
)


def redact_secrets(text: str) -> str:
    lowered = text.lower()
    for literals, pattern, replacement in _PATTERNS:
        if any(literal in lowered for literal in literals):  # most lines hold none
            text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """The configured format, with secrets redacted from the whole line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))
