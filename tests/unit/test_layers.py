"""The HTTP edge talks to the engine only through its interface (plain data, errors)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "app" / "api"
# What app/api may import from below it: the interface and the errors it raises.
ALLOWED = {"app.engine.interface", "app.engine.errors"}


def engine_imports(path: Path) -> set[str]:
    """Every app.engine / app.backends module a file imports (`from app.engine import x`
    counts as app.engine.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in {"app.engine", "app.backends"}:
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return {name for name in found if name.startswith(("app.engine", "app.backends"))}


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda path: path.name)
def test_api_imports_only_the_engine_interface(path: Path) -> None:
    assert engine_imports(path) <= ALLOWED


def test_the_check_sees_imports() -> None:
    assert engine_imports(API / "lifecycle.py") == {"app.engine.interface", "app.engine.errors"}
