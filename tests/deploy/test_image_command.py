"""The image's command, run from the virtualenv with the image's environment: it serves and probes.

No Docker engine runs here, so this is as close to the container as the tests get: the
Dockerfile's own CMD, ENV and HEALTHCHECK, with only the bind address, port and model
directory moved to this machine's loopback and repository.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, LiveServer, free_port, wait_until_ready
from tests.deploy.support import (
    COMPOSE_FILE,
    HEALTHCHECK_SCRIPT,
    Stage,
    dockerfile_stages,
    exec_form,
    load_yaml,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return dockerfile_stages(ROOT / "Dockerfile")[-1]


@pytest.fixture(scope="module")
def image_server(
    runtime: Stage, default_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    program, *arguments = exec_form(runtime.values("CMD")[-1])
    # The image installs the project's console script on PATH; here it is in the virtualenv.
    executable = Path(sys.executable).parent / program
    assert executable.is_file(), f"{program} is not installed in the virtualenv"
    image_env = runtime.env()
    # The model directory the image points at is where the runtime stage copies models/.
    (workdir,) = runtime.values("WORKDIR")
    assert image_env["ENCODER_MODELS_DIR"] == f"{workdir}/models"
    port = free_port()
    env = {
        **os.environ,
        **{key: value for key, value in image_env.items() if key != "PATH"},
        "ENCODER_HOST": "127.0.0.1",  # loopback only on this shared machine
        "ENCODER_PORT": str(port),
        "ENCODER_MODELS_DIR": str(default_models),
    }
    scratch = tmp_path_factory.mktemp("image")
    log_path = scratch / "server.log"
    with log_path.open("wb") as log:
        # Started outside the repository, as in the image: nothing may depend on the cwd.
        process = subprocess.Popen(
            [str(executable), *arguments], env=env, stdout=log, stderr=log, cwd=scratch
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    wait_until_ready(server)
    yield server
    server.stop()


def run_probe(command: list[str], port: str) -> subprocess.CompletedProcess[str]:
    """Run a container health check here: the image's python and script mapped to this repo."""
    interpreter, script, *arguments = command
    assert interpreter == "python" and Path(script).name == HEALTHCHECK_SCRIPT.name
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), *arguments],
        env={**os.environ, "ENCODER_PORT": port},
        capture_output=True,
        text=True,
        timeout=30,
    )


def image_healthcheck(runtime: Stage) -> list[str]:
    (healthcheck,) = runtime.values("HEALTHCHECK")
    return exec_form(healthcheck.partition("CMD")[2].strip())


def compose_healthcheck() -> list[str]:
    test: list[str] = load_yaml(COMPOSE_FILE)["services"]["encoder-serve"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


def port_of(server: LiveServer) -> str:
    return server.url.rsplit(":", 1)[1]


def test_image_command_is_ready_and_encodes(image_server: LiveServer) -> None:
    with image_server.client() as client:
        assert client.get("/ready").status_code == 200
        response = client.post("/encode", json={"inputs": ["Served as the image serves it."]})
        assert response.status_code == 200, response.text
        body = response.json()
    (vector,) = body["embeddings"]
    assert body["model"] == "minilm" and len(vector) == body["dimensions"] > 0
    assert body["usage"]["tokens"] > 0


def test_image_and_compose_health_checks_pass(image_server: LiveServer, runtime: Stage) -> None:
    for command in (image_healthcheck(runtime), compose_healthcheck()):
        result = run_probe(command, port_of(image_server))
        assert result.returncode == 0, (command, result.stderr)


def test_health_check_fails_on_a_missing_route(image_server: LiveServer, runtime: Stage) -> None:
    interpreter, script, _ = image_healthcheck(runtime)
    result = run_probe([interpreter, script, "/no-such-route"], port_of(image_server))
    assert result.returncode == 1 and "404" in result.stderr


def test_stopped_server_stops_cleanly_and_fails_its_health_check(
    image_server: LiveServer, runtime: Stage
) -> None:
    """Last in this module: it stops the shared server (what `docker stop` does: SIGTERM)."""
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit 143 in Docker).
    assert image_server.stop() in {0, -signal.SIGTERM}, image_server.log()
    assert "Application shutdown complete" in image_server.log()
    result = run_probe(image_healthcheck(runtime), port_of(image_server))
    assert result.returncode == 1
