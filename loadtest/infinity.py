"""infinity-emb as the peer of `make bench-peer`: its own virtualenv, our model laid out as
a directory it loads, and its server process, started and always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtest.server import ROOT, RunningServer, free_port, running_process

PEER_VENV = ROOT / ".venv-peer"
REQUIREMENTS = Path(__file__).with_name("peer-requirements.txt")
STAMP = ".installed"  # in the venv: the requirements it was installed from
# The tokenizer's companions: transformers' AutoTokenizer reads them where present.
TOKENIZER_COMPANIONS = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PEER_PACKAGES = (
    "infinity-emb", "optimum", "optimum-onnx", "onnxruntime", "transformers", "tokenizers",
    "numpy", "torch", "fastapi", "uvicorn",
)  # fmt: skip
POOLINGS = ("mean", "cls")  # the two poolings infinity's optimum engine knows


def log(message: str) -> None:
    print(f"[bench-peer] {message}", file=sys.stderr, flush=True)


# -- the virtualenv ------------------------------------------------------------------


def install_commands(venv: Path, python: str) -> list[list[str]]:
    """Create the venv (when missing) and install the pinned peer into it."""
    commands = [] if (venv / "bin" / "python").is_file() else [[python, "-m", "venv", str(venv)]]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    return [*commands, [*pip, "-r", str(REQUIREMENTS)]]


def ensure_venv(venv: Path = PEER_VENV, python: str = sys.executable) -> Path:
    """The peer's own virtualenv, installed once, and again when the pins change."""
    wanted = REQUIREMENTS.read_text()
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text() == wanted:
        return venv
    log(f"installing infinity-emb into {venv.name} (a minute or two, once)")
    for command in install_commands(venv, python):
        subprocess.run(command, check=True)
    stamp.write_text(wanted)
    return venv


VERSIONS_SCRIPT = """
import importlib.metadata as metadata, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        found[name] = "not installed"
print(json.dumps(found))
"""


def package_versions(python: Path | str, names: tuple[str, ...] = PEER_PACKAGES) -> dict[str, str]:
    """Versions of `names` as the interpreter `python` (of some venv) sees them."""
    found = subprocess.run(
        [str(python), "-c", VERSIONS_SCRIPT, *names],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(found.stdout))


# -- the model directory ---------------------------------------------------------------


@dataclass(frozen=True)
class PeerModel:
    """Our model, laid out as a Hugging Face directory with one ONNX file, for optimum."""

    directory: Path
    graph: Path  # our graph that the directory links to
    pooling: str  # "mean" or "cls"


def model_links(model_dir: Path, precision: str = "fp32") -> dict[str, Path]:
    """Name in the peer's directory → our file it links to, from the model's manifest.

    infinity (through optimum) wants config.json, the tokenizer files and the ONNX graph
    side by side; our repository keeps the transformers config with the PyTorch weights.
    """
    manifest = json.loads((model_dir / "model.json").read_text())
    files: dict[str, str] = manifest.get("files", {})
    if precision not in files:
        raise ValueError(f"{model_dir.name} has no {precision} graph (files: {sorted(files)})")
    graph = model_dir / files[precision]
    configs = [model_dir / "config.json", model_dir / files.get("torch", "torch") / "config.json"]
    config = next((path for path in configs if path.is_file()), None)
    if config is None:
        raise FileNotFoundError(f"no transformers config.json in {model_dir} (`make models`)")
    links = {graph.name: graph, "config.json": config}
    # External weights keep the name the graph refers to them by.
    for sidecar in sorted(model_dir.glob(f"{graph.name}?*")):
        if sidecar.suffix != ".onnx":
            links[sidecar.name] = sidecar
    tokenizer = model_dir / manifest.get("tokenizer", "tokenizer.json")
    links["tokenizer.json"] = tokenizer
    for name in TOKENIZER_COMPANIONS:
        if (model_dir / name).is_file():
            links[name] = model_dir / name
    missing = [str(path) for path in links.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"missing model files (`make models`): {', '.join(missing)}")
    return links


def lay_out_model(model_dir: Path, target: Path, precision: str = "fp32") -> PeerModel:
    """Symlink our files into `target` (nothing is copied, converted or downloaded)."""
    pooling = json.loads((model_dir / "model.json").read_text()).get("pooling", "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"infinity's ONNX engine pools by {POOLINGS}, not {pooling!r}")
    links = model_links(model_dir, precision)
    target.mkdir(parents=True, exist_ok=True)
    for name, source in links.items():
        link = target / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source.resolve())
    graph = next(path for name, path in links.items() if name.endswith(".onnx"))
    return PeerModel(target, graph, pooling)


# -- the server ----------------------------------------------------------------------


def infinity_command(venv: Path, model: PeerModel, port: int, served_name: str) -> list[str]:
    """`infinity_emb v2` on our graph with its defaults, but for what makes it our model.

    `--model-id .` with the model directory as working directory: infinity hands optimum
    the path of the ONNX file it found, and optimum-onnx 0.1 matches it against the names
    relative to the model directory; only a relative model id makes the two agree.
    `--onnx-disable-optimize` keeps our fused graph as it is (infinity would otherwise run
    ORTOptimizer over it and serve the result). `--url-prefix /v1` gives both servers the
    same route, so both receive the same request bytes.
    """
    return [
        str(venv / "bin" / "infinity_emb"), "v2",
        "--model-id", ".",
        "--served-model-name", served_name,
        "--engine", "optimum",
        "--device", "cpu",
        "--pooling-method", model.pooling,
        "--onnx-disable-optimize",
        "--url-prefix", "/v1",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip


def infinity_env(scratch: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Offline, no telemetry, caches in `scratch`; the user's INFINITY_* settings left out."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.startswith("INFINITY_")
    }
    env.update(
        HF_HOME=str(scratch / "hf-home"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DO_NOT_TRACK="1",
        INFINITY_ANONYMOUS_USAGE_STATS="0",
    )
    return env


@contextlib.contextmanager
def running_infinity(
    venv: Path, model: PeerModel, served_name: str, scratch: Path, log_path: Path
) -> Iterator[RunningServer]:
    """infinity-emb serving `model` on a free loopback port, ready; stopped on any exit."""
    port = free_port()
    command = infinity_command(venv, model, port, served_name)
    with running_process(
        command, infinity_env(scratch), model.directory, port, log_path, ready_path="/health"
    ) as server:
        yield server
