"""A real Prometheus scrapes a real server under load: counts, batch sizes and alert rules agree.

Prometheus is Debian's `prometheus` binary on a free loopback port with a throw-away
config and TSDB; it loads the bundle's own alerts.yml. Every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, free_port, start_server, stop_process
from tests.deploy.support import ALERT_RULES, alert_rules, require_tool

pytestmark = pytest.mark.slow

SEQUENTIAL = 4  # one request at a time: each is a forward pass of one
BURSTS = 2
BURST = 64  # requests in flight at once: the batcher must group them
SENT = SEQUENTIAL + BURSTS * BURST
WAIT_S = 60  # upper bound of every poll below; they return as soon as the condition holds

T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Call `probe` until it returns something other than None; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


@dataclass
class LivePrometheus:
    """A Prometheus server process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The value of a one-sample query, or None when it has no sample (yet)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.process)


def start_prometheus(binary: str, tmp_dir: Path, target: str) -> LivePrometheus:
    config = {
        # 1 s so the test waits seconds, not the bundle's 15 s, for a fresh scrape.
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {"job_name": "encoder-serve", "static_configs": [{"targets": [target]}]}
        ],
    }
    config_path = tmp_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_dir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
    prometheus = LivePrometheus(process, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool | None:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            return httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200 or None
        except httpx.TransportError:
            return None

    try:
        poll("Prometheus to be ready", ready)
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """Looked up first, so a machine without Prometheus skips before starting any server."""
    return require_tool("prometheus")


@pytest.fixture(scope="module")
def encoder_server(
    default_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server of its own: the request count below must be exactly what this module sent."""
    live = start_server(tmp_path_factory.mktemp("encoder"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, encoder_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LivePrometheus]:
    target = encoder_server.url.removeprefix("http://")
    live = start_prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"), target)
    yield live
    live.stop()


async def send_burst(url: str, burst: int, number: int) -> list[int]:
    # Texts of their own per burst: a repeat would be answered by the result cache, and
    # the batches of each input are what the tests count.
    limits = httpx.Limits(max_connections=burst)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post("/encode", json={"inputs": f"Request {i} of burst {number}."})
                for i in range(burst)
            )
        )
    return [response.status_code for response in responses]


def requests_counted(server: LiveServer) -> float:
    """Sum of encoder_requests_total on the server's own /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "encoder_requests_total"
    )


@pytest.fixture(scope="module")
def traffic(prometheus: LivePrometheus, encoder_server: LiveServer) -> str:
    """Send SENT requests, then wait until Prometheus has scraped after the last one.

    Returns the server's /metrics text taken after the traffic.
    """
    with encoder_server.client() as client:
        for i in range(SEQUENTIAL):
            response = client.post("/encode", json={"inputs": [f"Sequential request {i}."]})
            assert response.status_code == 200, response.text
    for number in range(BURSTS):
        codes = asyncio.run(send_burst(encoder_server.url, BURST, number))
        assert codes == [200] * BURST
    # The middleware counts a request right after its response is sent: wait for the last.
    poll(
        "the server to count every request",
        lambda: requests_counted(encoder_server) >= SENT or None,
    )
    traffic_done = time.time()
    # timestamp(up) is the start time of the latest scrape: one after the traffic sees it all.
    poll(
        "a Prometheus scrape after the traffic",
        lambda: (
            True
            if (prometheus.scalar('max(timestamp(up{job="encoder-serve"}))') or 0) > traffic_done
            else None
        ),
    )
    return httpx.get(f"{encoder_server.url}/metrics", timeout=10).text


def test_the_server_is_up_for_prometheus(prometheus: LivePrometheus, traffic: str) -> None:
    assert prometheus.scalar('up{job="encoder-serve"}') == 1


def test_prometheus_counts_every_request_sent(prometheus: LivePrometheus, traffic: str) -> None:
    # /metrics (scraped every second), /health and /ready are deliberately not counted.
    assert prometheus.scalar("sum(encoder_requests_total)") == SENT
    assert prometheus.scalar('sum(encoder_requests_total{endpoint="/encode", code="200"})') == SENT


def test_concurrent_load_is_batched(prometheus: LivePrometheus, traffic: str) -> None:
    p90 = prometheus.scalar("histogram_quantile(0.9, sum by (le) (encoder_batch_size_bucket))")
    batches = prometheus.scalar("sum(encoder_batch_size_count)")
    sequences = prometheus.scalar("sum(encoder_batch_size_sum)")
    assert sequences == SENT  # one input per request, each run exactly once
    assert p90 is not None and p90 > 1, f"p90 batch size {p90} over {batches} batches"


def test_every_alert_rule_loads_and_evaluates(prometheus: LivePrometheus, traffic: str) -> None:
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> dict[str, dict[str, Any]] | None:
        body = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()
        rules = {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
        done = set(rules) == expected and all(r["health"] != "unknown" for r in rules.values())
        return rules if done else None

    rules = poll("every alert rule to be evaluated", evaluated)
    assert {name: rule["health"] for name, rule in rules.items()} == dict.fromkeys(expected, "ok")
    # None of the traffic was refused or failed and the queue never neared 1024: those
    # alerts stay silent (latency depends on this machine's speed, so it is not asserted).
    quiet = "EncoderServeDown|EncoderQueueNearFull|EncoderRequestsRejected|EncoderServerErrors"
    assert prometheus.query(f'ALERTS{{alertname=~"{quiet}"}}') == []


def test_scrape_after_traffic_passes_promtool_check_metrics(traffic: str) -> None:
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=traffic,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    assert "encoder_batch_size_bucket" in traffic  # the scrape holds the traffic's histograms
