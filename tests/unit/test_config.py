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


# -- ENCODER_API_KEY: a value that yields no key must not silently leave the API open ------


def test_an_empty_api_key_means_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker compose passes `ENCODER_API_KEY: ${API_KEY:-}`, empty when API_KEY is unset.
    monkeypatch.setenv("ENCODER_API_KEY", "")
    assert Settings().api_key == []


def test_api_keys_are_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_API_KEY", " key-one , key-two,")
    assert [key.get_secret_value() for key in Settings().api_key] == ["key-one", "key-two"]
    keys = Settings(api_key=["a", "b"]).api_key  # type: ignore[list-item]
    assert [key.get_secret_value() for key in keys] == ["a", "b"]


@pytest.mark.parametrize("value", ["   ", ",", " , ", ",,,", " ,\t, "])
def test_an_api_key_value_without_keys_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ENCODER_API_KEY", value)
    with pytest.raises(ValidationError, match="ENCODER_API_KEY is set but holds no key"):
        Settings()


@pytest.mark.parametrize(
    "value", ["good,bad key", "good,bad\tkey", "bad\x01key", "bad\u2028key", "bad\x85key"]
)
def test_api_keys_with_whitespace_or_control_characters_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ENCODER_API_KEY", value)
    with pytest.raises(ValidationError, match="contains whitespace or a control character") as info:
        Settings()
    assert "ENCODER_API_KEY" in str(info.value)
    assert "bad" not in str(info.value)  # the message never repeats a key


def test_api_keys_given_as_a_list_are_checked_too() -> None:
    with pytest.raises(ValidationError, match="key 2 of 2 is empty"):
        Settings(api_key=["fine", ""])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="whitespace"):
        Settings(api_key=["two words"])  # type: ignore[list-item]
