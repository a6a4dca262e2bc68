"""Logging set-up: one JSON object per line on stdout (or plain text for humans).

Either way one record is one line: a request path, a message or a traceback cannot start a
line of its own (and so cannot forge a log entry). JSON escapes every control character
and every non-ASCII one; the text format escapes control characters itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

# Attributes every LogRecord has; anything else was passed via `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# C0 and C1 controls (CR and LF among them), DEL, the Unicode line and paragraph
# separators, and the backslash that starts an escape (so escapes are unambiguous).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` on one line: control characters and line separators written as escapes."""
    return _UNSAFE.sub(_escape_char, text)


def _extras(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """Fields passed with `extra=`; uvicorn's ANSI-coloured duplicate message is dropped."""
    for key, value in vars(record).items():
        if key not in _STANDARD and key != "color_message":
            yield key, value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            # With worker processes (ENCODER_WORKERS) several processes share the stream.
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) writes every control and non-ASCII character as an
        # escape, U+2028/U+2029 included: the line holds no line break of any kind.
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value …`, then the traceback, all on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        parts = [escape_controls(self.formatMessage(record))]
        parts += [f"{escape_controls(key)}={_text_value(value)}" for key, value in _extras(record)]
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += escape_controls("\n" + record.exc_text)
        if record.stack_info:
            line += escape_controls("\n" + self.formatStack(record.stack_info))
        return line


def _text_value(value: object) -> str:
    text = escape_controls(str(value))
    if not text or any(char in text for char in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def configure_logging(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
