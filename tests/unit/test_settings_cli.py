"""`encoder-serve serve` flags: one per setting, one-line errors, misspelt variables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app import __version__
from app.cli import build_parser
from app.config import Settings
from app.settings_cli import (
    SettingsError,
    given_settings,
    load_settings,
    unknown_variables,
)
from tests.conftest import ROOT


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("ENCODER_")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_help_lists_every_setting_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text, name
        assert f"ENCODER_{name.upper()}, default" in text, name


def test_a_flag_wins_over_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("ENCODER_MAX_QUEUE", "99")
    args = build_parser().parse_args(["serve", "--max-batch-size", "8", "--packing", "false"])
    settings = load_settings(given_settings(args))
    assert settings.max_batch_size == 8  # the flag
    assert settings.max_queue == 99  # the variable
    assert settings.packing is False


def test_invalid_values_name_the_variable_or_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_PRECISION", "int4")
    with pytest.raises(SettingsError) as raised:
        load_settings({"port": "70000"})
    port, precision = sorted(str(raised.value).splitlines())
    assert precision.startswith("invalid ENCODER_PRECISION: ") and "'int8'" in precision
    assert port.startswith("invalid --port: ")


def test_unknown_variables_are_reported_with_the_closest_setting() -> None:
    warnings = unknown_variables(
        {"ENCODER_MAX_BATCHSIZE": "8", "ENCODER_PORT": "1", "ENCODER_ZZZ": "1", "HOME": "/"}
    )
    assert warnings == [
        "ENCODER_MAX_BATCHSIZE is not a setting and is ignored; did you mean "
        "ENCODER_MAX_BATCH_SIZE?",
        "ENCODER_ZZZ is not a setting and is ignored",
    ]


def test_serve_with_a_bad_value_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_cli("serve", env={"ENCODER_PRECISION": "int4", "ENCODER_MAX_BATCHSIZE": "8"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "encoder-serve: warning: ENCODER_MAX_BATCHSIZE is not a setting and is ignored; "
        "did you mean ENCODER_MAX_BATCH_SIZE?",
        "encoder-serve: invalid ENCODER_PRECISION: Input should be 'auto', 'fp32', 'int8' "
        "or 'fp16'",
    ]


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"encoder-serve {__version__}"
