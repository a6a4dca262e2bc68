"""One start-up error style: each failure is one plain line on stderr and a documented exit
status (README "Exit statuses"); a busy port is found before any model loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run_serve(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("ENCODER_")}
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("encoder-serve: "), lines
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield taken.getsockname()[1]


@pytest.fixture
def broken_repository(tmp_path: Path) -> Path:
    """A repository whose only model cannot load (its manifest lacks every field)."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{}")
    return tmp_path


def test_the_default_repository_missing_points_at_make_models(tmp_path: Path) -> None:
    result = run_serve("--port", "0", cwd=tmp_path)  # `models` relative to an empty directory
    assert result.returncode == 4
    line = one_line(result)
    assert "models" in line and "does not exist" in line and "make models" in line


def test_another_repository_missing_says_how_to_export_into_it(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    result = run_serve("--port", "0", env={"ENCODER_MODELS_DIR": str(missing)})
    assert result.returncode == 4
    line = one_line(result)
    assert f"{missing} does not exist" in line and "make models" not in line
    assert f"encoder-serve export SOURCE --name NAME --models-dir {missing}" in line


def test_an_empty_repository_says_it_holds_no_model(tmp_path: Path) -> None:
    result = run_serve("--port", "0", "--models-dir", str(tmp_path))
    assert result.returncode == 4 and "holds no model" in one_line(result)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_found_before_any_model_loads(
    busy_port: int, broken_repository: Path, workers: str
) -> None:
    # The broken model would stop start-up with status 4 once loading began: status 3
    # says the port was checked first.
    result = run_serve(
        "--port", str(busy_port), "--workers", workers, "--models-dir", str(broken_repository)
    )
    assert result.returncode == 3, result.stderr
    line = one_line(result)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line and "--port" in line
    assert "broken" not in result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_cannot_load_is_one_line_and_status_4(
    broken_repository: Path, workers: str
) -> None:
    result = run_serve(
        "--port", "0", "--workers", workers, "--models-dir", str(broken_repository),
        "--log-level", "error",
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    line = one_line(result)
    assert "broken" in line and "model.json" in line


def test_an_invalid_setting_is_one_line_and_status_2() -> None:
    result = run_serve("--port", "0", env={"ENCODER_MAX_BATCH_SIZE": "0"})
    assert result.returncode == 2
    assert "ENCODER_MAX_BATCH_SIZE" in one_line(result)
