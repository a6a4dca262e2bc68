"""Settings come from ENCODER_* variables, with validated values and documented defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_PORT", "9001")
    monkeypatch.setenv("ENCODER_MODELS", "minilm, sentiment")
    monkeypatch.setenv("ENCODER_MAX_WAIT_MS", "7.5")
    settings = Settings()
    assert settings.port == 9001
    assert settings.models == ["minilm", "sentiment"]
    assert settings.max_wait_ms == 7.5


def test_zero_threads_means_every_available_core() -> None:
    assert Settings(intra_op_threads=0).intra_op_threads == len(os.sched_getaffinity(0))


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [f"ENCODER_{name.upper()}" for name in Settings.model_fields]
    missing = [variable for variable in missing if f"`{variable}`" not in text]
    assert not missing, f"settings missing from the README table: {missing}"
