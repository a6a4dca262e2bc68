"""How many HTTP worker processes `ENCODER_WORKERS` asks for."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.sizing import worker_count


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (7, 1), (8, 2), (16, 4), (64, 8)])
def test_auto_is_one_worker_per_four_cores_between_one_and_eight(cores: int, expected: int) -> None:
    assert worker_count("auto", cores) == expected


def test_a_number_is_taken_as_given() -> None:
    assert worker_count(3, 2) == 3


@pytest.mark.parametrize("value", ["0", "-1"])
def test_fewer_than_one_worker_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_WORKERS", value)
    with pytest.raises(ValueError, match="at least 1"):
        Settings()
