"""Fixtures of the image tests: the engine (or one skip line), the CPU image, its container."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker.engine import (
    FACTS,
    IMAGE,
    build,
    engine_problem,
    image_size,
    require_engine,
    require_image,
)

# Where no engine answers, the image tests are not collected and test_engine.py's one
# test skips, saying why in one line (instead of one line per test).
collect_ignore_glob = [] if engine_problem() is None else ["test_[!e]*.py"]

# The Dockerfile's default base; .ci/run makes a stand-in under this tag where no
# registry can be reached (tests/docker/standin_images.sh).
PYTHON_IMAGE = "python:3.11.14-slim-bookworm"


@pytest.fixture(scope="session")
def cpu_image() -> Iterator[str]:
    """The CPU image built from the repository's Dockerfile (build arguments only)."""
    require_engine()
    require_image(PYTHON_IMAGE, "run tests/docker/standin_images.sh as root to make a stand-in")
    build("Dockerfile", IMAGE)
    FACTS["runtime image size"] = f"{image_size(IMAGE) / 1e9:.2f} GB ({IMAGE})"
    yield IMAGE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FACTS:
        terminalreporter.section("image tests")
        for key, value in FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")
