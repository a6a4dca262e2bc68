"""Kubernetes manifests: valid per the API's OpenAPI schemas (offline), consistent with the app."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.metrics import Metrics
from tests.conftest import ROOT
from tests.deploy.support import (
    K8S_DIR,
    default_setting,
    dockerfile_stages,
    get_routes,
    load_yaml,
    setting_variables,
)

CUSTOM_METRICS = K8S_DIR / "custom-metrics"
# The oldest Kubernetes the manifests promise to work on, and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Not Kubernetes resources: kustomize's own file and the prometheus-adapter Helm values.
NOT_RESOURCES = {K8S_DIR / "kustomization.yaml", CUSTOM_METRICS / "prometheus-adapter-values.yaml"}
# The own-models overlay: a kustomization and a patch (a partial Deployment), checked below.
OWN_MODELS = K8S_DIR / "own-models"
MANIFESTS = sorted(
    path for path in set(K8S_DIR.rglob("*.yaml")) - NOT_RESOURCES if OWN_MODELS not in path.parents
)


def resources_of(kind: str, *, optional: bool = False) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in MANIFESTS:
        if optional != (CUSTOM_METRICS in path.parents):
            continue
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == kind)
    return found


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    (found,) = resources_of("Deployment")
    return found


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(found, dict)
    return found


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: str(path.relative_to(K8S_DIR)))
def test_manifest_is_valid_for_kubernetes(path: Any, version: str) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents
    for document in documents:
        # strict: unknown fields (a misspelt probe, say) are errors, as `kubectl --validate` does.
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda spec: spec["containers"][0].update(readinesProbe={}),  # misspelt field
        lambda spec: spec["containers"][0]["ports"][0].update(containerPort="8000"),  # type
        lambda spec: spec.update(terminationGracePeriodSeconds="45s"),
    ],
    ids=["unknown-field", "string-port", "duration-string"],
)
def test_validation_rejects_a_broken_manifest(deployment: dict[str, Any], break_it: Any) -> None:
    """The validation above is real and offline: the shipped schemas catch mistakes."""
    broken = copy.deepcopy(deployment)
    break_it(broken["spec"]["template"]["spec"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_exactly_the_base_manifests() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    listed = kustomization["resources"]
    for name in listed:
        assert (K8S_DIR / name).is_file(), f"kustomization lists {name}, which does not exist"
    base = sorted(path.name for path in MANIFESTS if path.parent == K8S_DIR)
    assert sorted(listed) == base
    # The custom-metric HPA needs prometheus-adapter: it is opt-in, never in the base.
    assert not any(name.startswith("custom-metrics") for name in listed)
    (image,) = kustomization["images"]
    containers = [c["image"] for d in resources_of("Deployment") for c in _containers(d)]
    assert all(reference.split(":")[0] == image["name"] for reference in containers)


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def test_container_port_and_probes_match_the_app(container: dict[str, Any]) -> None:
    (port,) = container["ports"]
    assert port["containerPort"] == default_setting("port")
    assert int(environment(container)["ENCODER_PORT"]) == port["containerPort"]
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/ready"
    assert liveness["httpGet"]["path"] == "/health"
    for probe in (readiness, liveness):
        assert probe["httpGet"]["path"] in get_routes()
        assert probe["httpGet"]["port"] in {port["name"], port["containerPort"]}


def test_prometheus_annotations_point_at_metrics(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in get_routes()


def test_grace_period_outlasts_pre_stop_and_drain(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    drain = float(environment(container)["ENCODER_DRAIN_S"])
    assert drain == 30
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain + float(command[1])


def test_resources_are_requested_and_limited(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert resources["requests"][kind] and resources["limits"][kind], kind
    # The threads the pod says it uses match its CPU limit (what auto sizing reads as well).
    threads = int(environment(container)["ENCODER_INTRA_OP_THREADS"])
    assert threads == int(resources["limits"]["cpu"])


def test_environment_names_are_settings(container: dict[str, Any]) -> None:
    names = set(environment(container))
    assert names <= setting_variables(), names - setting_variables()


def test_pods_run_as_the_image_user(deployment: dict[str, Any]) -> None:
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    image_user = dockerfile_stages(ROOT / "Dockerfile")[-1].values("USER")[-1]
    assert str(security["runAsUser"]) == image_user.split(":")[0]


def test_service_hpa_and_pdb_target_the_deployment(deployment: dict[str, Any]) -> None:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (service,) = resources_of("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    (container_port,) = _containers(deployment)[0]["ports"]
    assert service_port["targetPort"] in {container_port["name"], container_port["containerPort"]}
    (budget,) = resources_of("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    for autoscaler in resources_of("HorizontalPodAutoscaler") + resources_of(
        "HorizontalPodAutoscaler", optional=True
    ):
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert autoscaler["spec"]["minReplicas"] > budget["spec"]["minAvailable"]


def test_cpu_autoscaler_scales_on_cpu() -> None:
    (autoscaler,) = resources_of("HorizontalPodAutoscaler")
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_queue_depth_autoscaler_uses_a_metric_the_server_exports() -> None:
    (autoscaler,) = resources_of("HorizontalPodAutoscaler", optional=True)
    pods = [m["pods"] for m in autoscaler["spec"]["metrics"] if m["type"] == "Pods"]
    (metric,) = pods
    name = metric["metric"]["name"]
    exported = {collector.name for collector in Metrics().registry.collect()}
    assert name == "encoder_queue_depth" and name in exported
    # prometheus-adapter must publish that name from that series.
    (rule,) = load_yaml(CUSTOM_METRICS / "prometheus-adapter-values.yaml")["rules"]["custom"]
    assert re.match(rf"{name}\{{", rule["seriesQuery"])
    assert rule["name"]["as"] == name
    assert float(metric["target"]["averageValue"]) < default_setting("max_queue")


def test_environment_is_accepted_by_settings(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in environment(container).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.intra_op_threads == int(container["resources"]["limits"]["cpu"])


def test_own_models_overlay_mounts_a_claim_read_only_over_the_models(
    deployment: dict[str, Any],
) -> None:
    """deploy/k8s/own-models: the base plus a read-only models volume from a claim, merged
    here as kustomize's strategic merge does (lists of named items merge by name)."""
    overlay = load_yaml(OWN_MODELS / "kustomization.yaml")
    assert overlay["resources"] == ["../"]
    (patch_entry,) = overlay["patches"]
    patch = load_yaml(OWN_MODELS / patch_entry["path"])
    assert patch["metadata"]["name"] == deployment["metadata"]["name"]
    merged = copy.deepcopy(deployment)
    spec, patch_spec = merged["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
    spec["volumes"] += patch_spec["volumes"]
    (patch_container,) = patch_spec["containers"]
    (target,) = [c for c in spec["containers"] if c["name"] == patch_container["name"]]
    target["volumeMounts"] += patch_container["volumeMounts"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(merged, version, strict=True)
    (mount,) = [m for m in target["volumeMounts"] if m["name"] == "models"]
    # The image's ENCODER_MODELS_DIR, read from the Dockerfile.
    (image_models,) = re.findall(r"ENCODER_MODELS_DIR=(\S+)", (ROOT / "Dockerfile").read_text())
    assert mount == {"name": "models", "mountPath": image_models, "readOnly": True}
    (volume,) = [v for v in spec["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
