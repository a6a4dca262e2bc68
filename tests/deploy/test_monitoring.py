"""The monitoring bundle: Prometheus config and alert rules, Grafana dashboard and provisioning."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import ROOT, LiveServer
from tests.deploy.support import (
    ALERT_RULES,
    ALERT_TESTS,
    COMPOSE_FILE,
    DASHBOARD,
    GRAFANA_DIR,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    alert_rules,
    bind_mounts,
    dashboard_queries,
    default_setting,
    exported_series_names,
    load_yaml,
    promql_metric_names,
    require_tool,
)

# Prometheus writes `up` for every target itself; the server never exports it.
PROMETHEUS_SERIES = frozenset({"up"})

# What the dashboard must show (the list of panels), as the series each one reads.
REQUIRED_SERIES = {
    "request rate by endpoint and code": "encoder_requests_total",
    "p50/p99 latency": "encoder_request_duration_seconds_bucket",
    "queue depth": "encoder_queue_depth",
    "queue wait": "encoder_queue_wait_seconds_bucket",
    "inference time": "encoder_inference_duration_seconds_bucket",
    "batch size distribution": "encoder_batch_size_bucket",
    "tokens/s": "encoder_tokens_total",
    "rejections": "encoder_rejected_total",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    parsed = json.loads(DASHBOARD.read_text())
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = load_yaml(COMPOSE_FILE)
    assert isinstance(parsed, dict)
    return parsed


# -- Prometheus -----------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERT_RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    """alerts.test.yml feeds synthetic series through every rule and lists what must fire."""
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    tested = load_yaml(ALERT_TESTS)
    assert tested["rule_files"] == [ALERT_RULES.name]
    fired = {
        case["alertname"]
        for test in tested["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in alert_rules()} <= fired


def test_alerts_cover_down_queue_rejections_and_latency() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert any(re.match(r"up\b.*== 0", expr) for expr in exprs.values())
    assert any("encoder_queue_depth" in expr for expr in exprs.values())
    assert any('encoder_requests_total{code="429"}' in expr for expr in exprs.values())
    shed = 'encoder_rejected_total{reason=~"queue_full|would_miss_deadline"}'
    assert any(shed in expr for expr in exprs.values())
    assert any(
        "histogram_quantile(0.99" in expr and "encoder_request_duration_seconds_bucket" in expr
        for expr in exprs.values()
    )
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_queue_alert_threshold_is_80_percent_of_the_default_queue() -> None:
    (expr,) = [rule["expr"] for rule in alert_rules() if "encoder_queue_depth" in rule["expr"]]
    threshold = int(re.search(r">\s*(\d+)", expr).group(1))  # type: ignore[union-attr]
    assert threshold == int(0.8 * default_setting("max_queue"))


def test_prometheus_scrapes_the_compose_server(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [ALERT_RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (target,) = jobs["encoder-serve"]["static_configs"][0]["targets"]
    service, port = target.split(":")
    assert service in compose["services"]
    assert int(port) == default_setting("port")
    assert jobs["encoder-serve"].get("metrics_path", "/metrics") == "/metrics"
    # The GPU server is discovered by name, so it must be the compose GPU service.
    (gpu,) = jobs["encoder-serve-gpu"]["dns_sd_configs"]
    assert gpu["names"] == ["encoder-serve-gpu"] and gpu["port"] == default_setting("port")
    assert "gpu" in compose["services"]["encoder-serve-gpu"]["profiles"]


# -- metric names against a live scrape -----------------------------------


@pytest.fixture(scope="module")
def exported(server: LiveServer) -> set[str]:
    """Series names of a real server's /metrics, taken after some traffic."""
    with server.client() as client:
        response = client.post("/encode", json={"inputs": ["a first text", "a second"]})
        assert response.status_code == 200, response.text
        scrape = client.get("/metrics")
    assert scrape.status_code == 200
    names = exported_series_names(scrape.text)
    assert "encoder_requests_total" in names  # the scrape parsed
    return names


def test_promql_metric_names_are_found() -> None:
    """The extractor the next tests rely on sees metrics, not functions, labels or durations."""
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{code="429", x=~"$x"}'
        "[$__rate_interval]))) / on (instance) group_left b_total > 1e3 and c offset 5m"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert promql_metric_names('label_values(d_info{m=~"$m"}, model)') == {"d_info"}


def test_alert_rules_use_only_exported_metrics(exported: set[str]) -> None:
    for rule in alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported | PROMETHEUS_SERIES, (rule["alert"], names - exported)


def test_dashboard_uses_only_exported_metrics(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    queries = dashboard_queries(dashboard)
    assert queries
    for query in queries:
        names = promql_metric_names(query)
        assert names, query
        assert names <= exported | PROMETHEUS_SERIES, (query, names - exported)


# -- the Grafana dashboard ------------------------------------------------


def test_dashboard_shows_every_required_series(dashboard: dict[str, Any]) -> None:
    used = set().union(*(promql_metric_names(query) for query in dashboard_queries(dashboard)))
    missing = {panel: series for panel, series in REQUIRED_SERIES.items() if series not in used}
    assert not missing
    quantiles = {
        match
        for query in dashboard_queries(dashboard)
        if "encoder_request_duration_seconds_bucket" in query
        for match in re.findall(r"histogram_quantile\((0\.\d+)", query)
    }
    assert {"0.5", "0.99"} <= quantiles


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["title"] and panel["targets"], panel["title"]
        # Every query reads the data source the viewer picked, never a hard-wired uid.
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]
            for variable in re.findall(r"\$(\w+)", target["expr"]):
                assert variable in variables or variable.startswith("__"), variable
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells


def test_grafana_provisioning_matches_compose(compose: dict[str, Any]) -> None:
    (source,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    url = urlparse(source["url"])
    assert url.hostname in compose["services"]
    prometheus_ports = {port.split(":")[-1] for port in compose["services"]["prometheus"]["ports"]}
    assert str(url.port) in prometheus_ports

    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "encoder-serve.yml")[
        "providers"
    ]
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    # The provider reads the directory compose mounts the repository's dashboards into.
    dashboards_dir = "./" + DASHBOARD.parent.relative_to(ROOT).as_posix()
    assert mounts[dashboards_dir] == provider["options"]["path"]
    provisioning_dir = "./" + (GRAFANA_DIR / "provisioning").relative_to(ROOT).as_posix()
    assert mounts[provisioning_dir] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
