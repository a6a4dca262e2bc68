"""The offline tools' progress messages: one stream per command (app/export/messages.py)."""

from __future__ import annotations

import io

import pytest

from app.export import delta, exporter, train_head
from app.export.messages import messages_to, say


def test_every_tools_lines_go_to_the_commands_stream(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    with messages_to(stream):
        exporter.progress(1, 6, "loading")
        delta.progress("rebuilding")
        train_head.progress("features", "embedding")
        say("[eval] done")
    assert stream.getvalue().splitlines() == [
        "[1/6] loading",
        "[rebuild] rebuilding",
        "[features] embedding",
        "[eval] done",
    ]
    assert capsys.readouterr().err == ""


def test_without_a_stream_messages_go_to_stderr_as_it_is_now(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with messages_to(io.StringIO()):
        pass
    say("[data] read")  # sys.stderr looked up at each line: pytest's capture sees it
    with messages_to(None):
        delta.progress("again")
    assert capsys.readouterr().err == "[data] read\n[rebuild] again\n"
