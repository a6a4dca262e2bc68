"""Where the offline tools' progress messages go: one stream per command, set in one place.

`export`, `finetune`, `train-head` and `rebuild` write progress lines ("[train] step …",
"[eval] …", "[2/6] exporting …") through `say`; the command's result line is the CLI's, on
stdout. The stream is stderr unless a caller gives another with `messages_to` (`finetune`'s
`stream`), and it is looked up at each line, so a redirected sys.stderr (pytest's capture)
is followed too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

_stream: ContextVar[TextIO | None] = ContextVar("export_messages", default=None)


def message_stream() -> TextIO:
    """The stream of the command running now: the one given to `messages_to`, else stderr."""
    return _stream.get() or sys.stderr


def say(line: str) -> None:
    print(line, file=message_stream(), flush=True)


@contextmanager
def messages_to(stream: TextIO | None) -> Iterator[None]:
    """Every message said inside goes to `stream` (None: stderr)."""
    token = _stream.set(stream)
    try:
        yield
    finally:
        _stream.reset(token)
