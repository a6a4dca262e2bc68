"""One log record is one line in both formats: nothing a client sends can forge a line."""

from __future__ import annotations

import json
import logging
import sys

from app.logs import JsonFormatter, TextFormatter, escape_controls

# A request path as uvicorn decodes `/encode%0A2026-…`, with every kind of line break.
FORGED = (
    "GET /encode\n2026-01-01 00:00:00,000 INFO encoder_serve.requests: fake line"
    "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00\x1b[31m\x7f\x9f\t"
)


def record(message: str = "%s %d", *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord(
        "encoder_serve.requests", logging.INFO, __file__, 1, message, args or None, None
    )
    entry.__dict__.update(extra)
    return entry


def failing_record() -> logging.LogRecord:
    try:
        raise RuntimeError(f"bad input:{FORGED}")
    except RuntimeError:
        entry = record("unhandled error on %s", FORGED)
        entry.exc_info = sys.exc_info()
        entry.levelno, entry.levelname = logging.ERROR, "ERROR"
    return entry


def test_escape_controls_writes_every_line_break_and_control_as_an_escape() -> None:
    escaped = escape_controls(FORGED + "\\")
    assert len(escaped.splitlines()) == 1
    assert all(char.isprintable() for char in escaped)
    assert "\\n2026-01-01" in escaped and "\\r" in escaped and "\\t" in escaped
    assert "\\x85" in escaped and "\\u2028" in escaped and "\\u2029" in escaped
    assert "\\x00" in escaped and "\\x1b[31m" in escaped and "\\x7f" in escaped
    assert escaped.endswith("\\\\")  # a backslash is escaped too: escapes stay unambiguous
    assert escape_controls("plain text, é and 中文") == "plain text, é and 中文"


def test_text_format_keeps_message_extras_and_traceback_on_one_line() -> None:
    formatter = TextFormatter()
    line = formatter.format(record("%s %s %d", "GET", FORGED, 404, request_id="abc", note=FORGED))
    assert len(line.splitlines()) == 1 and all(char.isprintable() for char in line)
    assert " INFO encoder_serve.requests: GET GET /encode\\n2026-01-01 00:00:00,000 " in line
    assert " request_id=abc " in line and ' note="GET /encode\\n2026' in line

    line = formatter.format(failing_record())
    assert len(line.splitlines()) == 1 and all(char.isprintable() for char in line)
    assert "\\nTraceback (most recent call last):\\n" in line
    assert "RuntimeError: bad input:GET /encode\\n2026-01-01" in line


def test_json_format_is_one_line_too() -> None:
    formatter = JsonFormatter()
    for entry in (record("%s", FORGED, path=FORGED), failing_record()):
        line = formatter.format(entry)
        assert len(line.splitlines()) == 1 and line.isascii() and line.isprintable()
        parsed = json.loads(line)
        assert FORGED in parsed["message"]
    assert parsed["exception"].startswith("Traceback (most recent call last):\n")
