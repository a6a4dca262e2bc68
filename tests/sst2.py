"""SST-2 dev accuracy of a served classifier, measured through HTTP (skips where data is absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import pytest

SST2_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv"
LABELS = ["negative", "positive"]


def dev_accuracy(url: str, model: str = "sentiment") -> float:
    if not SST2_DEV.is_file():
        pytest.skip(f"SST-2 dev set not found at {SST2_DEV}; accuracy not measured")
    with SST2_DEV.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    text_column = next(c for c in ("sentence", "content", "text") if c in rows[0])
    correct = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(rows), 128):
            chunk = rows[start : start + 128]
            body = {"inputs": [row[text_column] for row in chunk], "model": model}
            response = client.post("/classify", json=body)
            assert response.status_code == 200, response.text
            for row, result in zip(chunk, response.json()["results"], strict=True):
                correct += result[0]["label"] == LABELS[int(row["label"])]
    return correct / len(rows)
