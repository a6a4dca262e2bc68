"""docker-compose.yml for real (#32): encoder-serve and Prometheus up from the project's
compose file, the target scraped (`up == 1`), one of the project's metrics read back
through Prometheus' HTTP API, then `down` cleanly.

Grafana stays a static check here (tests/deploy/test_monitoring.py): neither its image nor
its packages come from a registry these machines reach. Prometheus' image is a stand-in
made from Debian's `prometheus` where prom/prometheus cannot be pulled.

Compose: the v2 plugin (`docker compose`) where it is installed; else Debian 12's
`docker-compose` 1.29, which knows everything in the file but the top-level `name` (newer
than 1.29): it gets the file without that key and the same name as `-p`. Either way the
file goes without its `ports` (on the host's network they publish nothing, and the engine
refuses both at once); tests/docker/compose.loopback.yml holds the test's other changes; the models
volume is deploy/docker/compose.models.yml, mounting ./models as a user's models would be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.docker.engine import FACTS, free_port, require_image
from tests.docker.engine import docker as docker_cli

pytestmark = pytest.mark.slow

COMPOSE_FILE = ROOT / "docker-compose.yml"
LOOPBACK = ROOT / "tests" / "docker" / "compose.loopback.yml"
MODELS_VOLUME = ROOT / "deploy" / "docker" / "compose.models.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "monitoring" / "prometheus"
UP_TIMEOUT_S = 240
SCRAPE_TIMEOUT_S = 120  # the scrape interval is 15 s


def compose_command() -> list[str] | None:
    """`docker compose` (v2) where it answers, else `docker-compose` (v1), else None."""
    try:
        if docker_cli("compose", "version", check=False, timeout=20).returncode == 0:
            return ["docker", "compose"]
    except AssertionError:
        pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def stack(cpu_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    command = compose_command()
    if command is None:
        pytest.skip(
            "compose tests skipped: neither `docker compose` nor `docker-compose` is installed "
            "(Debian: apt-get install docker-compose; .ci/run installs it where root)"
        )
    require_image("prom/prometheus:v2.55.1", "run tests/docker/standin_images.sh as root")
    scratch = tmp_path_factory.mktemp("compose")
    scratch.chmod(0o755)
    project = f"encoder-serve-test-{free_port()}"
    # The copy's changes: no `ports` (the host's network publishes nothing: the engine
    # refuses both at once), and for compose v1 no top-level `name` (given as -p instead).
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    for service in document["services"].values():
        service.pop("ports", None)
    if command == ["docker-compose"]:
        assert document.pop("name") == "encoder-serve"
    compose_file = scratch / "docker-compose.yml"
    compose_file.write_text(yaml.safe_dump(document, sort_keys=False))
    port, prometheus_port = free_port(), free_port()
    prometheus_dir = scratch / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, prometheus_dir)
    config = prometheus_dir / "prometheus.yml"
    assert '"encoder-serve:8000"' in config.read_text()
    config.write_text(config.read_text().replace('"encoder-serve:8000"', f'"encoder-serve:{port}"'))
    for path in (prometheus_dir, *prometheus_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {
        "ENCODER_TEST_IMAGE": cpu_image,
        "ENCODER_TEST_PORT": str(port),
        "ENCODER_TEST_PROMETHEUS_PORT": str(prometheus_port),
        "ENCODER_TEST_PROMETHEUS_DIR": str(prometheus_dir),
        "ENCODER_MODELS_PATH": str(ROOT / "models"),
    }
    base = [
        *command,
        # deploy.resources.limits (2 CPUs, 2 GiB) applied by v1 as v2 applies them.
        *(["--compatibility"] if command == ["docker-compose"] else []),
        "--project-name",
        project,
        "--project-directory",
        str(ROOT),
        "-f",
        str(compose_file),
        "-f",
        str(MODELS_VOLUME),
        "-f",
        str(LOOPBACK),
    ]

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*base, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **env},
            cwd=ROOT,
        )
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result

    FACTS["compose"] = " ".join(command) + (
        " " + compose("version", "--short").stdout.strip() if command == ["docker-compose"] else ""
    )
    try:
        compose("up", "--detach", "--no-build", "encoder-serve", "prometheus")
        yield {
            "compose": compose,
            "url": f"http://127.0.0.1:{port}",
            "prometheus": f"http://127.0.0.1:{prometheus_port}",
            "project": project,
        }
    finally:
        subprocess.run(
            [*base, "down", "--volumes", "--timeout", "40"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=180,
        )


def _container(project: str, service: str) -> str:
    return docker_cli(
        "ps",
        "--all",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    ).stdout.strip()


def _wait(what: str, timeout: float, probe) -> object:
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout:
        try:
            last = probe()
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def _query(prometheus: str, promql: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def test_compose_serves_prometheus_scrapes_and_down_is_clean(stack: dict) -> None:
    server = _container(stack["project"], "encoder-serve")
    assert server

    def healthy() -> bool:
        status = docker_cli("inspect", "--format", "{{.State.Health.Status}}", server).stdout
        return status.strip() == "healthy"

    started = time.monotonic()
    _wait("encoder-serve healthy (compose's /ready health check)", UP_TIMEOUT_S, healthy)
    FACTS["compose: encoder-serve healthy after"] = f"{time.monotonic() - started:.0f} s"
    # The models volume: ./models mounted read-only, the defaults and any user model served.
    mounts = docker_cli("inspect", "--format", "{{json .Mounts}}", server).stdout
    assert str(ROOT / "models") in mounts and "/srv/encoder-serve/models" in mounts
    with httpx.Client(base_url=stack["url"], timeout=30) as client:
        for _ in range(5):
            answer = client.post("/encode", json={"inputs": ["scraped by Prometheus"]})
            assert answer.status_code == 200, answer.text
    # deploy.resources.limits: 2 CPUs, 2 GiB, as the sizing line tells.
    logs = docker_cli("logs", server, check=False).stderr + docker_cli("logs", server).stdout
    assert "2 cores (cgroup CPU quota 2 CPUs" in logs and "memory limit 2048 MiB" in logs

    up = _wait(
        "Prometheus reports up == 1 for encoder-serve",
        SCRAPE_TIMEOUT_S,
        lambda: [
            r
            for r in _query(stack["prometheus"], 'up{job="encoder-serve"}')
            if r["value"][1] == "1"
        ],
    )
    assert up
    requests = _wait(
        "encoder_requests_total through Prometheus",
        SCRAPE_TIMEOUT_S,
        lambda: [
            r
            for r in _query(stack["prometheus"], 'sum(encoder_requests_total{endpoint="/encode"})')
            if float(r["value"][1]) >= 5
        ],
    )
    FACTS["compose: encoder_requests_total via Prometheus"] = requests[0]["value"][1]

    started = time.monotonic()
    stack["compose"]("down", "--volumes", "--timeout", "40")
    FACTS["compose: down"] = f"{time.monotonic() - started:.0f} s"
    assert _container(stack["project"], "encoder-serve") == ""
    assert _container(stack["project"], "prometheus") == ""
