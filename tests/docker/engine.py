"""What the image tests share: the Docker engine, the build, a running container.

Everything a test touches is on loopback: builds and containers use the host's network
(the engine may run with `--bridge=none --iptables=false`, as .ci/run starts it), so
a container listens on 127.0.0.1 at a port chosen free. Every wait is bounded.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

IMAGE = os.environ.get("ENCODER_TEST_IMAGE", "encoder-serve:image-test")
# A cold build here took about 5 minutes; a warm one (layer cache) seconds.
BUILD_TIMEOUT_S = 1800
HEALTHY_TIMEOUT_S = 240
# Facts shown at the end of the run (conftest's terminal summary): build time, size...
FACTS: dict[str, str] = {}


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """`docker ARGS`, bounded; a failure shows the command and what it printed."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # see build(): the classic builder
    try:
        result = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"docker {shlex.join(args)} ran past {timeout} s") from error
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {shlex.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@functools.cache
def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except FileNotFoundError:
        return "no `docker` command"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["`docker info` failed"])[-1]
    return None


def require_engine() -> None:
    problem = engine_problem()
    if problem is not None:
        pytest.skip(
            f"image tests skipped: no Docker engine ({problem}); .ci/run installs and "
            "starts one where it is root (README, Run with Docker Compose)"
        )


def require_image(tag: str, how: str) -> None:
    """Skip, naming the image, when the engine has no image `tag` and cannot pull one."""
    if docker("image", "inspect", tag, check=False, timeout=30).returncode == 0:
        return
    if docker("pull", "-q", tag, check=False, timeout=120).returncode == 0:
        return
    pytest.skip(f"no image {tag} here and none can be pulled: {how}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pip_find_links() -> list[Path]:
    """Local directories pip looks in for wheels here (PIP_FIND_LINKS, pip's config)."""
    values = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        config = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        config = ""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            values.extend(value.strip("'\"").split())
    return [Path(value) for value in values if Path(value).is_dir()]


def local_torch_wheels() -> Path | None:
    """A directory holding the torch wheel the Dockerfile pins, where there is one."""
    for directory in _pip_find_links():
        if any(directory.glob("torch-2.13.0*-cp311-*.whl")):
            return directory
    return None


# The build argument's value is part of the build cache's key: a port that changed from
# one run to the next would rebuild every layer after it, torch's included. So a fixed
# port, and the next ones where it is taken.
WHEELS_PORTS = (18765, 18766, 18767, 18768)


@contextmanager
def served_directory(directory: Path) -> Iterator[str]:
    """`directory` over HTTP on loopback (pip's --find-links reads its listing)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    for port in WHEELS_PORTS:
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            break
        except OSError:
            continue
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build(dockerfile: str, tag: str) -> None:
    """Build `dockerfile` of the repository as it is, changing build arguments only.

    The classic builder (DOCKER_BUILDKIT=0): it runs on every engine without the buildx
    plugin and needs no frontend image from a registry, and `--network host` keeps
    the build's traffic on this machine's own network. Where the PyTorch CPU index is out
    of reach but pip here has the pinned torch wheel in a local directory, that directory
    is served on loopback and named by the build arguments README "Run with Docker
    Compose" documents.
    """
    args = ["build", "--network", "host", "-f", dockerfile, "-t", tag]
    wheels = local_torch_wheels()
    started = time.monotonic()
    if wheels is None:
        docker(*args, str(ROOT), timeout=BUILD_TIMEOUT_S)
    else:
        with served_directory(wheels) as url:
            args += ["--build-arg", "TORCH_INDEX_URL=", "--build-arg", f"PIP_FIND_LINKS={url}"]
            docker(*args, str(ROOT), timeout=BUILD_TIMEOUT_S)
    FACTS[f"{dockerfile} build"] = f"{time.monotonic() - started:.0f} s" + (
        f" (torch from {wheels})" if wheels else ""
    )


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)


class Container:
    """One running container of the image, on the host's network at `port`."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, tag: str, *options: str, env: dict[str, str] | None = None) -> Container:
        port = free_port()
        name = f"encoder-serve-test-{os.getpid()}-{port}"
        environment = {"ENCODER_HOST": "127.0.0.1", "ENCODER_PORT": str(port), **(env or {})}
        flags = [f"--env={key}={value}" for key, value in environment.items()]
        docker("run", "--detach", "--name", name, "--network", "host", *flags, *options, tag)
        return cls(name, port)

    def inspect(self) -> dict:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def health(self) -> str:
        state = self.inspect()["State"]
        if not state["Running"]:
            return "exited"
        return state.get("Health", {}).get("Status", "none")

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT_S) -> float:
        """Seconds until Docker's health check said healthy (the image's HEALTHCHECK)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            status = self.health()
            if status == "healthy":
                return time.monotonic() - started
            if status in ("unhealthy", "exited"):
                break
            time.sleep(1)
        raise AssertionError(
            f"container {status} after {time.monotonic() - started:.0f} s:\n{self.logs()[-4000:]}"
        )

    def wait_ready(self, timeout: float = HEALTHY_TIMEOUT_S) -> None:
        """Until GET /ready answers 200 (sooner than the health check's first interval)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.inspect()["State"]["Running"]:
                break
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"{self.name} not ready:\n{self.logs()[-4000:]}")

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *command, check=check, timeout=60)

    def logs(self) -> str:
        result = docker("logs", self.name, check=False, timeout=60)
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False, timeout=120)


def log_lines_matching(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]
