"""What the deployment tests share: repository paths, the app's routes and settings, PromQL."""

from __future__ import annotations

import functools
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.api.app import create_app
from app.config import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = MONITORING / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "encoder-serve.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = DEPLOY / "k8s"
HEALTHCHECK_SCRIPT = DEPLOY / "docker" / "healthcheck.py"
DOCKERFILES = (ROOT / "Dockerfile", ROOT / "Dockerfile.gpu")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def require_tool(name: str) -> str:
    """The path of a Prometheus tool, or a skip that says which Debian package brings it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"`{name}` is not installed: it ships in Debian's `prometheus` package "
            "(apt-get install prometheus; .ci/run installs it where missing)"
        )
    return path


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path -> container path of a compose service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):  # the others are named volumes
            mounts[source] = target
    return mounts


# -- the application ------------------------------------------------------


@functools.cache
def get_routes() -> frozenset[str]:
    """Paths the real app answers GET on, from its OpenAPI document.

    The OpenAPI document is the public view of the routes: `app.routes` nests included
    routers in private types that change between FastAPI versions.
    """
    paths = create_app(Settings()).openapi()["paths"]
    return frozenset(path for path, methods in paths.items() if "get" in methods)


def default_setting(name: str) -> Any:
    return Settings.model_fields[name].default


def setting_variables() -> frozenset[str]:
    """Every `ENCODER_*` variable the server reads."""
    return frozenset(f"ENCODER_{name.upper()}" for name in Settings.model_fields)


# -- Prometheus text format and PromQL ------------------------------------


def exported_series_names(exposition: str) -> set[str]:
    """Series names a scrape can hold, with the suffixes each metric type adds.

    Names come from the `# TYPE` lines too, so a counter that has not been incremented
    yet (no samples) still counts as exported.
    """
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan", "atan2"}
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed).

    Strips what can hold identifiers that are not metrics (strings, label matchers,
    ranges, `by (...)` label lists), then keeps identifiers that are not function calls
    or keywords.
    """
    grafana = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.DOTALL)
    if grafana:
        expr = grafana.group(1)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in ".$":
            continue  # an exponent or duration suffix, or a Grafana variable
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group(0).lower() not in _PROMQL_WORDS:
            names.add(match.group(0))
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


# -- Dockerfiles ----------------------------------------------------------


@dataclass
class Stage:
    """One `FROM` stage of a Dockerfile: its base image and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def env(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        for value in self.values("ENV"):
            for pair in shlex.split(value):
                key, _, item = pair.partition("=")
                variables[key] = item
        return variables


def dockerfile_stages(path: Path) -> list[Stage]:
    """Stages of a Dockerfile with global `ARG` defaults substituted into `FROM`."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=path.open("rb"))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "COMMENT":
            continue
        if kind == "ARG" and not stages:
            name, _, default = value.partition("=")
            global_args[name.strip()] = default.strip()
        elif kind == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], value)
            base, _, name = image.partition(" AS ") if " AS " in image else (image, "", "")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            stages[-1].instructions.append((kind, value))
    return stages


def exec_form(value: str) -> list[str]:
    """The argument list of a JSON (exec form) CMD/HEALTHCHECK/ENTRYPOINT value."""
    import json

    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), value
    return parsed
