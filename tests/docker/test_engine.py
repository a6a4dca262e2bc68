"""The image tests' one line where no Docker engine answers (conftest.py collects no other)."""

from __future__ import annotations

from tests.docker.engine import engine_problem, require_engine


def test_a_docker_engine_answers() -> None:
    require_engine()  # skips here, with the reason, where none does
    assert engine_problem() is None
