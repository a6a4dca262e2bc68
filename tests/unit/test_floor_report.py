"""The floor comparison's report: ratios and medians from given figures (no server, no timing)."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.front_end import FLOOR_ROUTES, floor_markdown, floor_summary, main


def point(round_index: int, target: str, route: str, cpu_us: int, rate: float) -> dict[str, Any]:
    return {
        "round": round_index,
        "target": target,
        "route": route,
        "clients": 32,
        "requests_per_s": rate,
        "server_cpu_cores": 1.0,
        "server_cpu_us_per_request": cpu_us,
        "generator_cpu_us_per_request": 40,
        "p50_ms": 5.0,
        "p99_ms": 9.0,
        "errors": 0,
    }


POINTS = [
    point(1, "floor", "/encode", 200, 4800.0),
    point(1, "server", "/encode", 700, 1400.0),
    point(2, "server", "/encode", 500, 1600.0),
    point(2, "floor", "/encode", 200, 4600.0),
    point(1, "floor", "/v1/embeddings", 250, 4000.0),
    point(1, "server", "/v1/embeddings", 400, 2500.0),
    point(1, "floor", "/classify", 300, 3300.0),
    point(1, "server", "/classify", 900, 1100.0),
]


def test_summary_divides_the_servers_median_cpu_by_the_floors() -> None:
    rows = {row["route"]: row for row in floor_summary(POINTS)}
    assert list(rows) == ["/encode", "/v1/embeddings", "/classify"]
    encode = rows["/encode"]
    assert encode["floor_cpu_us_per_request"] == 200
    assert encode["server_cpu_us_per_request"] == 600  # median of 700 and 500
    assert encode["ratio"] == 3.0
    assert (encode["target"], encode["meets_target"]) == (1.5, False)
    assert encode["floor_requests_per_s"] == 4700.0
    assert encode["server_requests_per_s"] == 1500.0
    assert rows["/v1/embeddings"]["ratio"] == 1.6
    assert rows["/v1/embeddings"]["meets_target"] is True  # ≤ 1.8
    assert rows["/classify"]["ratio"] == 3.0


def test_summary_skips_a_route_measured_on_one_side_only() -> None:
    rows = floor_summary([point(1, "floor", "/encode", 200, 4800.0)])
    assert rows == []


def test_markdown_shows_each_route_with_its_ratio_and_target() -> None:
    report = {
        "date": "2026-12-06",
        "generator": "wrk",
        "clients": 32,
        "seconds": 3.0,
        "rounds": 2,
        "machine": {"cores_usable": "2"},
        "summary": floor_summary(POINTS),
        "points": POINTS,
    }
    text = floor_markdown(report)
    assert "| `/encode` | 200 | 600 | **3.00** | ≤ 1.5 | no | 4700 | 1500 |" in text
    assert "| `/v1/embeddings` | 250 | 400 | **1.60** | ≤ 1.8 | yes |" in text
    assert text.count("\n| 1 | floor |") == 3


def test_every_floor_route_has_a_target() -> None:
    assert [route.path for route in FLOOR_ROUTES] == ["/encode", "/v1/embeddings", "/classify"]
    assert all(route.target > 1 for route in FLOOR_ROUTES)


def test_floor_only_is_an_option() -> None:
    with pytest.raises(SystemExit):
        main(["--floor-only", "--help"])
