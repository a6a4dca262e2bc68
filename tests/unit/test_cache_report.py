"""loadtest/cache.py's load mix and report, without servers."""

from __future__ import annotations

import json
import random
from pathlib import Path

from loadtest.cache import HOT_TEXTS, POOL, pool_of, ratios, write_report
from loadtest.texts import TextSource


def test_the_repeats_load_repeats_about_half_its_requests_from_the_hot_texts() -> None:
    hot = TextSource(seed=1).take(HOT_TEXTS)
    texts = pool_of("repeats", TextSource(seed=2), hot, random.Random(3))
    assert len(texts) == POOL
    repeated = sum(text in set(hot) for text in texts)
    assert 0.47 < repeated / POOL < 0.53
    fresh = [text for text in texts if text not in set(hot)]
    assert len(set(fresh)) == len(fresh)  # the other half never repeats
    unique = pool_of("unique", TextSource(seed=4), hot, random.Random(3))
    assert len(set(unique)) == POOL and not set(unique) & set(hot)


def point(
    round_: int, load: str, cache: str, rate: float, cpu_ms: float = 10.0
) -> dict[str, object]:
    hit = 0.5 if (cache, load) == ("on", "repeats") else (0.0 if cache == "on" else None)
    return {
        "round": round_,
        "load": load,
        "cache": cache,
        "sequences_per_s": rate,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
        "cpu_ms_per_request": cpu_ms,
        "hit_ratio": hit,
        "errors": 0,
    }


def test_the_report_gives_on_over_off_per_round_and_load(tmp_path: Path) -> None:
    points = [
        point(1, "repeats", "on", 300.0, cpu_ms=5.0),
        point(1, "repeats", "off", 150.0, cpu_ms=10.0),
        point(1, "unique", "on", 148.0),
        point(1, "unique", "off", 150.0),
        point(2, "repeats", "off", 160.0),
        point(2, "repeats", "on", 304.0),
        point(2, "unique", "off", 150.0),
        point(2, "unique", "on", 153.0),
    ]
    assert ratios(points, "repeats") == [2.0, 1.9]
    assert ratios(points, "unique") == [0.99, 1.02]
    # CPU per request: without ÷ with, so a gain reads above 1 as throughput does.
    assert ratios(points, "repeats", "cpu_ms_per_request") == [2.0, 1.0]
    write_report(points, 2, 5.0, 32, "wrk", tmp_path)
    text = (tmp_path / "cache.md").read_text()
    assert "**1.95** (median; rounds: 2.00, 1.90)" in text
    assert "**1.50** (median; rounds: 2.00, 1.00)" in text
    assert "**1.00** (median; rounds: 0.99, 1.02)" in text
    assert text.count("\n| ") == 1 + len(points)
    saved = json.loads((tmp_path / "cache.json").read_text())
    assert saved["on_over_off"] == {"repeats": [2.0, 1.9], "unique": [0.99, 1.02]}
    assert saved["cpu_per_request_off_over_on"]["repeats"] == [2.0, 1.0]
