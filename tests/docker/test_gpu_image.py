"""Dockerfile.gpu (#32, item 4): built where its CUDA base image can be had; where it
cannot, the skip names the image. Running it needs an NVIDIA GPU and the container
toolkit, which these machines do not have: the build and the image's contents are checked.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from tests.docker.conftest import PYTHON_IMAGE
from tests.docker.engine import FACTS, build, docker, image_size, require_engine, require_image

pytestmark = pytest.mark.slow

GPU_IMAGE = "encoder-serve:image-test-gpu"


def _cuda_image() -> str:
    match = re.search(r"^ARG CUDA_IMAGE=(\S+)$", (ROOT / "Dockerfile.gpu").read_text(), re.M)
    assert match, "Dockerfile.gpu names its CUDA base in ARG CUDA_IMAGE"
    return match.group(1)


def test_the_gpu_image_builds_without_torch() -> None:
    require_engine()
    require_image(PYTHON_IMAGE, "run tests/docker/standin_images.sh as root to make a stand-in")
    cuda = _cuda_image()
    require_image(cuda, "Dockerfile.gpu's CUDA runtime base (NVIDIA's registry) is out of reach")
    build("Dockerfile.gpu", GPU_IMAGE)
    FACTS["GPU image size"] = f"{image_size(GPU_IMAGE) / 1e9:.2f} GB ({GPU_IMAGE})"
    probe = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        GPU_IMAGE,
        "-c",
        "import importlib.util as u; print(u.find_spec('torch') is None, "
        "u.find_spec('onnxruntime') is not None)",
    )
    assert probe.stdout.split() == ["True", "True"]
