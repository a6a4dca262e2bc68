"""The CPU image for real (#32): built from the Dockerfile, run with a 2-CPU, 2 GiB limit and
one's own model mounted, healthy, serving, locked down, and stopped under load losing nothing.

The tests share one container and run in file order: the last stops it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.docker.engine import FACTS, Container, docker, log_lines_matching
from tests.tiny_models import build_tiny_bert

pytestmark = pytest.mark.slow

MODELS = "/srv/encoder-serve/models"
STOP_GRACE_S = 40  # docker-compose.yml's stop_grace_period: longer than ENCODER_DRAIN_S (30)


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory `encoder-serve export` wrote on the host, as a user's would be."""
    source = build_tiny_bert(tmp_path_factory.mktemp("tiny-source"))
    repo = tmp_path_factory.mktemp("own-models")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "export",
            str(source),
            "--name",
            "mine",
            "--models-dir",
            str(repo),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    repo.chmod(0o755)  # pytest's temporary directories are private; the server is uid 10001
    return repo / "mine"


@pytest.fixture(scope="module")
def container(cpu_image: str, own_model: Path) -> Iterator[Container]:
    """The image as README documents running it: 2 CPUs, 2 GiB, one's own model mounted."""
    started = Container.start(
        cpu_image,
        "--cpus=2",
        "--memory=2g",
        f"--stop-timeout={STOP_GRACE_S}",
        f"--volume={own_model}:{MODELS}/mine:ro",
    )
    try:
        FACTS["healthy after"] = f"{started.wait_healthy():.0f} s (Docker's health check)"
        started.wait_ready()  # the image's HEALTHCHECK is liveness (/health); traffic waits
        yield started
    finally:
        started.remove()


def test_the_image_serves_encode_classify_and_metrics(container: Container) -> None:
    with httpx.Client(base_url=container.url, timeout=30) as client:
        assert client.get("/ready").status_code == 200
        # Unnamed: a mounted model leaves the image's marked defaults in place (README,
        # your own models).
        encoded = client.post("/encode", json={"inputs": ["The cat sits on the mat."]})
        assert encoded.status_code == 200, encoded.text
        assert encoded.json()["model"] == "minilm"
        assert len(encoded.json()["embeddings"][0]) == 384
        sentiment = client.post(
            "/classify", json={"inputs": ["A wonderful, moving film."], "model": "sentiment"}
        )
        assert sentiment.status_code == 200, sentiment.text
        assert sentiment.json()["results"][0][0]["label"] == "positive"
        topic = client.post(
            "/classify",
            json={"inputs": ["The striker scored twice in the final."], "model": "topic"},
        )
        assert topic.status_code == 200, topic.text
        assert {r["label"] for r in topic.json()["results"][0]} == {
            "World",
            "Sports",
            "Business",
            "Sci/Tech",
        }
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "encoder_requests_total{" in metrics.text


def test_a_mounted_model_is_served_beside_the_image_s_own(container: Container) -> None:
    with httpx.Client(base_url=container.url, timeout=30) as client:
        encoded = client.post("/encode", json={"inputs": ["my own model"], "model": "mine"})
        assert encoded.status_code == 200, encoded.text
        assert encoded.json()["model"] == "mine"
        assert len(encoded.json()["embeddings"][0]) == 32  # the tiny model's width


def test_it_runs_as_uid_10001_without_torch_compilers_or_write_access(
    container: Container,
) -> None:
    status = container.exec("cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["10001"] * 4
    no_torch = container.exec("python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    compilers = container.exec("sh", "-c", "command -v gcc cc g++ c++ clang", check=False)
    assert compilers.stdout.strip() == ""
    for target in (f"{MODELS}/new-file", f"{MODELS}/minilm/new-file", f"{MODELS}/mine/new-file"):
        write = container.exec("touch", target, check=False)
        assert write.returncode != 0, f"uid 10001 could write {target}"
        assert "Permission denied" in write.stderr or "Read-only" in write.stderr


def test_sizing_follows_the_container_s_limits(container: Container) -> None:
    # --cpus=2 sets a CFS quota of 2 CPUs; --memory=2g a 2048 MiB limit (README "Workers").
    lines = log_lines_matching(container.logs(), "sizing: ")
    assert len(lines) == 1, container.logs()[-3000:]
    line = lines[0]
    FACTS["sizing logged"] = line[line.index("sizing: ") :].split('"')[0]
    assert "2 cores (cgroup CPU quota 2 CPUs in /sys/fs/cgroup/cpu" in line
    assert "memory limit 2048 MiB" in line
    assert "1 HTTP worker(s) (ENCODER_WORKERS=auto)" in line
    assert "2 intra-op thread(s) per model" in line


def test_a_model_baked_into_a_derived_image_is_served(cpu_image: str, own_model: Path) -> None:
    """README's way to bake one's models in: deploy/docker/own-models.Dockerfile."""
    tag = f"{cpu_image}-own-models"
    docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE={cpu_image}",
        "-t",
        tag,
        "-f",
        str(ROOT / "deploy" / "docker" / "own-models.Dockerfile"),
        str(own_model.parent),
        timeout=600,
    )
    baked = Container.start(tag, "--cpus=2", "--memory=2g")
    try:
        baked.wait_ready()
        with httpx.Client(base_url=baked.url, timeout=30) as client:
            models = {m["name"] for m in client.get("/models").json()["models"]}
            assert {"minilm", "sentiment", "topic", "mine"} <= models
            mine = client.post("/encode", json={"inputs": ["baked in"], "model": "mine"})
            assert mine.status_code == 200, mine.text
        write = baked.exec("touch", f"{MODELS}/mine/new-file", check=False)
        assert write.returncode != 0
    finally:
        baked.remove()
        docker("rmi", tag, check=False)


def _load(
    url: str, stop: threading.Event, outcomes: Counter, deadline: float, lost_at: list[float]
) -> None:
    """Requests back to back on a kept-alive connection until told to stop or answered 503
    (shutting down: a client, or the load balancer in front of it, then goes elsewhere;
    one that kept knocking would at last meet the closing listener, whose kernel backlog
    resets connections the server never accepted), sorted by fate."""
    with httpx.Client(base_url=url, timeout=60) as client:
        sent = 0
        while not stop.is_set() and time.monotonic() < deadline and sent < 5000:
            sent += 1
            try:
                answer = client.post("/encode", json={"inputs": ["drain me, gently"] * 4})
            except httpx.ConnectError:
                outcomes["refused (not accepted)"] += 1
                time.sleep(0.05)
                continue
            except httpx.HTTPError as error:
                outcomes[f"lost: {type(error).__name__}: {error}"] += 1
                lost_at.append(time.monotonic())
                continue
            outcomes[str(answer.status_code)] += 1
            if answer.status_code == 503:
                return


def test_docker_stop_under_load_loses_no_accepted_request(container: Container) -> None:
    stop = threading.Event()
    outcomes: Counter = Counter()
    lost_at: list[float] = []
    deadline = time.monotonic() + 150
    threads = [
        threading.Thread(target=_load, args=(container.url, stop, outcomes, deadline, lost_at))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    try:
        while outcomes["200"] < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outcomes["200"] >= 50, outcomes
        started = time.monotonic()
        docker("stop", f"--time={STOP_GRACE_S}", container.name, timeout=STOP_GRACE_S + 30)
        stopped_s = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    state = container.inspect()["State"]
    FACTS["docker stop under load"] = (
        f"{stopped_s:.1f} s, exit code {state['ExitCode']}: "
        + (", ".join(f"{key} {value}" for key, value in sorted(outcomes.items())))
        + "".join(f"; a loss {at - started:.2f} s after `docker stop`" for at in lost_at)
    )
    lost = {key: value for key, value in outcomes.items() if key.startswith("lost")}
    assert not lost, outcomes
    assert set(outcomes) <= {"200", "503", "refused (not accepted)"}, outcomes
    assert state["ExitCode"] == 0 and not state["OOMKilled"]
    assert stopped_s < STOP_GRACE_S  # drained and exited; not killed at the grace period
