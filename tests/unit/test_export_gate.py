"""The exporter refuses to write a model whose graph disagrees with PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.export import exporter
from app.export.parity import ParityReport, parity_texts
from tests.tiny_models import build_tiny_bert


def test_parity_texts_are_a_few_dozen_of_mixed_length() -> None:
    texts = parity_texts()
    assert 24 <= len(texts) <= 60
    lengths = sorted(len(text.split()) for text in texts)
    assert lengths[0] == 1 and lengths[-1] > 300


def test_graph_below_the_cosine_gate_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build_tiny_bert(tmp_path / "source")
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(exporter, "check_parity", lambda *args: ParityReport(32, 0.5, 0.9990))
    with pytest.raises(exporter.ParityError, match=r"min cosine 0\.999000 \(gate 0\.9999\)"):
        exporter.export_model(str(source), "bad", repo)
    assert list(repo.iterdir()) == []  # neither the model nor its scratch directory
