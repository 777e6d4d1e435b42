"""API keys never reach a log line (chatproject.redaction); the live server's own log is
checked in tests/test_hostile_input.py."""

import logging
import sys

import pytest

from chatproject.redaction import RedactingFormatter, redact_secrets
from chatproject.server import RedactingAccessLog

KEY = "sk_live_m0iHoVnVg-h1b7qBHfnRybFLgH0EHG3Q"


@pytest.mark.parametrize(
    "line",
    [
        f"GET /api/v1/chats/user/u1?api_key={KEY}&limit=1",
        f"GET /x?my_api_key={KEY}",
        f"GET /x?token={KEY}",
        f"Authorization: Bearer {KEY}",
        f"headers {{'X-API-Key': '{KEY}'}}",
        f"X-API-Key: {KEY}",
        f"Not Found: /api/v1/chats/user/{KEY}",
        f"senderId user_{KEY}",
    ],
)
def test_keys_are_redacted(line):
    redacted = redact_secrets(line)
    assert KEY not in redacted and KEY[8:] not in redacted
    assert "[REDACTED]" in redacted


def test_other_lines_are_left_alone():
    line = 'GET /api/v1/chats/user/u1?limit=10&offset=0 "HTTP/1.1 200 OK"'
    assert redact_secrets(line) == line


def test_the_formatter_redacts_tracebacks_too():
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert KEY not in RedactingFormatter("%(message)s").format(record)


def test_the_access_log_decodes_before_redacting(caplog):
    caplog.set_level(logging.INFO, logger="daphne.access")
    escaped = KEY.replace("_", "%5F")
    RedactingAccessLog(None)(
        "http",
        "complete",
        {
            "client": "127.0.0.1:1",
            "method": "GET",
            "path": f"/x?api%5Fkey={escaped}",
            "status": 401,
            "size": 10,
        },
    )
    assert caplog.records and KEY not in caplog.text and escaped not in caplog.text
