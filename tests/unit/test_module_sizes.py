"""Files that each own one thing (#29): a module in app/ over MAX_LINES says why it stays
one file, in its first comment or docstring ("Why one file …"), or is split by job."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
REASON = "Why one file"


def _head(text: str) -> str:
    """What comes before the first import: the docstring and the first comments."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith(("import ", "from ")):
            return "\n".join(lines[:number])
    return text


def test_long_modules_say_why_they_are_one_file() -> None:
    unexplained = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        count = len(text.splitlines())
        if count > MAX_LINES and REASON not in _head(text):
            unexplained.append(f"{name} ({count} lines)")
    assert not unexplained, (
        f"over {MAX_LINES} lines without a '{REASON} …' reason before the imports; split "
        f"them by job or give the reason: {', '.join(unexplained)}"
    )
