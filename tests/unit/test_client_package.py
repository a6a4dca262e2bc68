"""The Python client as its own package: a wheel that needs only httpx, importable and
working where none of the server's dependencies can be imported."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "encoder_serve_client"

# Importing any of these from the client would make it need the server's install.
SERVER_MODULES = [
    "app",
    "fastapi",
    "starlette",
    "pydantic",
    "numpy",
    "onnxruntime",
    "tokenizers",
    "orjson",
    "uvicorn",
    "prometheus_client",
]

# Runs in a fresh interpreter that cannot import the server's modules; uses the client
# against an httpx mock transport.
USE_THE_CLIENT = """
import sys

BLOCKED = set(sys.argv[1].split(","))


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the client imported {name}")
        return None


sys.meta_path.insert(0, Refuse())
sys.path.insert(0, sys.argv[2])

import httpx

from encoder_serve_client import EncoderClient


def answer(request):
    assert request.url.path == "/encode"
    body = {"model": "m", "dimensions": 2, "embeddings": [[0.6, 0.8]], "usage": {"tokens": 3}}
    return httpx.Response(200, json=body)


with EncoderClient("http://test", transport=httpx.MockTransport(answer)) as client:
    result = client.encode("hi")
assert (result.model, result.embeddings, result.tokens) == ("m", [[0.6, 0.8]], 3)
print("ok")
"""


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of encoder_serve_client/pyproject.toml, built from a copy of the directory."""
    source = tmp_path / "encoder_serve_client"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("encoder_serve_client-*.whl")
    return wheel


def test_the_client_wheel_holds_the_client_and_needs_only_httpx(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(
            archive.read(next(name for name in names if name.endswith("/METADATA")))
        )
        archive.extractall(tmp_path / "installed")
    modules = sorted(name for name in names if not name.split("/")[0].endswith(".dist-info"))
    assert modules == [
        "encoder_serve_client/__init__.py",
        "encoder_serve_client/client.py",
        "encoder_serve_client/py.typed",
    ]
    assert metadata["Name"] == "encoder-serve-client"
    assert [value.split(">")[0] for value in metadata.get_all("Requires-Dist")] == ["httpx"]
    # What the wheel installs works where the server's modules cannot be imported.
    used = subprocess.run(
        [
            sys.executable,
            "-c",
            USE_THE_CLIENT,
            ",".join(SERVER_MODULES),
            str(tmp_path / "installed"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == "ok"
