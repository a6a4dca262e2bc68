"""docker-compose.yml: valid per the Compose specification, and consistent with the repo and app."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest

from app.config import Settings
from tests.conftest import ROOT
from tests.deploy.support import (
    COMPOSE_FILE,
    HEALTHCHECK_SCRIPT,
    bind_mounts,
    default_setting,
    dockerfile_stages,
    get_routes,
    load_yaml,
    setting_variables,
)

SERVERS = ("encoder-serve", "encoder-serve-gpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = load_yaml(COMPOSE_FILE)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def compose_schema() -> jsonschema.protocols.Validator:
    """The Compose specification's JSON schema, as vendored by the check-jsonschema package."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], compose_schema: jsonschema.protocols.Validator
) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in compose_schema.iter_errors(compose)]
    assert not errors


@pytest.mark.parametrize(
    "break_it",
    [
        lambda doc: doc["services"]["encoder-serve"].update(helthcheck={}),  # misspelt key
        lambda doc: doc["services"]["encoder-serve"].update(restart=["always"]),  # wrong type
        lambda doc: doc["services"]["grafana"]["depends_on"].append(42),
    ],
    ids=["unknown-key", "wrong-type", "bad-dependency"],
)
def test_the_schema_rejects_a_broken_compose_file(
    compose: dict[str, Any], compose_schema: jsonschema.protocols.Validator, break_it: Any
) -> None:
    """The validation above can fail: the schema is strict enough to catch real mistakes."""
    broken = copy.deepcopy(compose)
    break_it(broken)
    assert list(compose_schema.iter_errors(broken))


def test_every_mounted_path_exists(compose: dict[str, Any]) -> None:
    mounted = [
        source for service in compose["services"].values() for source in bind_mounts(service)
    ]
    assert mounted  # Prometheus and Grafana mount the monitoring bundle
    for source in mounted:
        assert (ROOT / source).exists(), f"compose mounts {source}, which is not in the repository"


def test_every_build_names_an_existing_dockerfile(compose: dict[str, Any]) -> None:
    for name in SERVERS:
        build = compose["services"][name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_server_port_is_the_settings_default(compose: dict[str, Any]) -> None:
    port = default_setting("port")
    for name in SERVERS:
        service = compose["services"][name]
        container_ports = {int(mapping.split(":")[-1]) for mapping in service["ports"]}
        assert container_ports == {port}, name
        assert int(service["environment"]["ENCODER_PORT"]) == port, name
    assert compose["services"]["encoder-serve"]["ports"] == [f"{port}:{port}"]


def test_server_environment_names_are_settings(compose: dict[str, Any]) -> None:
    known = setting_variables()
    for name in SERVERS:
        variables = set(compose["services"][name]["environment"])
        assert {"ENCODER_HOST", "ENCODER_PORT", "ENCODER_MAX_QUEUE"} <= variables
        assert variables <= known, (name, variables - known)


def test_healthcheck_probes_ready_with_the_image_script(compose: dict[str, Any]) -> None:
    for name in SERVERS:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        interpreter, script, path = test[1:]
        assert path == "/ready" and path in get_routes()
        # The script is the one the service's Dockerfile copies into its runtime image.
        runtime = dockerfile_stages(ROOT / compose["services"][name]["build"]["dockerfile"])[-1]
        assert f"{HEALTHCHECK_SCRIPT.relative_to(ROOT)} {script}" in runtime.values("COPY")
        assert interpreter == "python"


def test_servers_restart_and_have_resource_limits(compose: dict[str, Any]) -> None:
    for name in SERVERS:
        service = compose["services"][name]
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}
        assert service["deploy"]["resources"]["limits"]["memory"]
    cpu = compose["services"]["encoder-serve"]
    # One forward pass should use exactly the cores the container may use.
    threads = re.fullmatch(
        r"\$\{ENCODER_INTRA_OP_THREADS:-(\d+)\}", cpu["environment"]["ENCODER_INTRA_OP_THREADS"]
    )
    assert threads and float(threads.group(1)) == float(
        cpu["deploy"]["resources"]["limits"]["cpus"]
    )


def test_stop_grace_period_outlasts_the_drain(compose: dict[str, Any]) -> None:
    for name in SERVERS:
        service = compose["services"][name]
        drain = re.search(r"(\d+)", str(service["environment"]["ENCODER_DRAIN_S"]))
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert drain and grace
        assert int(grace.group(1)) > int(drain.group(1)), name


def test_gpu_server_is_an_optional_profile_on_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["encoder-serve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    assert gpu["environment"]["ENCODER_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # Without the profile, `docker compose up` starts only services with no profile.
    always = {name for name, service in compose["services"].items() if "profiles" not in service}
    assert always == {"encoder-serve", "prometheus", "grafana"}
    # Both servers may run at once: their host ports must differ.
    host_ports = [
        mapping.split(":")[0] for name in SERVERS for mapping in compose["services"][name]["ports"]
    ]
    assert len(set(host_ports)) == len(host_ports)


def test_monitoring_services_are_pinned_and_wired(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$|@sha256:[0-9a-f]{64}$", image), image
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert bind_mounts(services["prometheus"])["./deploy/monitoring/prometheus"] == (
        "/etc/prometheus"
    )


def test_grafana_allows_anonymous_read_only_viewing(compose: dict[str, Any]) -> None:
    environment = compose["services"]["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_server_environment_is_accepted_by_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no override from the shell, each `${VAR:-default}` value is a valid setting."""
    for name in SERVERS:
        for key, value in compose["services"][name]["environment"].items():
            monkeypatch.setenv(key, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)))
        settings = Settings()
        assert settings.port == default_setting("port")
        assert settings.max_queue == default_setting("max_queue")
        assert settings.models == []  # an empty ENCODER_MODELS serves every model
