"""Kubernetes manifests: strict validation against the Kubernetes JSON schemas that kubernetes-validate
bundles (offline), and the facts they must share with the Dockerfile and the app: probe paths that are
real routes, the port the image exposes, the user the image runs as."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes still commonly run and the newest whose schemas the package bundles.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# Custom resources have no schema among Kubernetes' own; they are checked structurally below.
CRDS = {("serving.kserve.io/v1beta1", "InferenceService")}
MANIFESTS = sorted(K8S.glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in documents(path)]


def one(kind: str, name: str) -> dict:
    found = [d for _, d in all_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def deployments() -> list[dict]:
    return [d for _, d in all_documents() if d["kind"] == "Deployment"]


def dockerfile_expose() -> int:
    exposed = set(re.findall(r"^EXPOSE\s+(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert len(exposed) == 1, exposed
    return int(exposed.pop())


def dockerfile_uid() -> int:
    users = set(re.findall(r"^USER\s+(\d+)(?::\d+)?\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert len(users) == 1, users
    return int(users.pop())


def app_routes() -> set[str]:
    """The app's GET/POST paths, read from its OpenAPI document (no server needed)."""
    from app.main import create_app

    return set(create_app().api.openapi()["paths"])


def test_the_expected_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    assert names == {
        "deployment.yaml",
        "deployment-gpu.yaml",
        "service.yaml",
        "hpa.yaml",
        "kserve-inferenceservice.yaml",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in documents(path):
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue  # no schema for a CRD here: test_kserve_inference_service checks it
        # strict: unknown fields are errors too (a typo such as `readinesProbe` would pass otherwise).
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(map(str, error.path))
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} at {where}: {error.message}")


def test_validation_is_real_and_offline() -> None:
    """The schemas ship inside the package (no download), and a broken manifest is rejected."""
    deployment = one("Deployment", "deepserve")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert any(schemas.glob("v1.29*-local-strict/deployment-apps-v1.json"))


def test_kinds() -> None:
    """Every document is a Kubernetes kind the schemas cover (an unknown one raises SchemaNotFoundError
    in the validation test, where the CLI would only warn) or the one CRD checked structurally."""
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in all_documents())
    assert kinds == [
        ("Deployment", "deepserve"),
        ("Deployment", "deepserve-gpu"),
        ("HorizontalPodAutoscaler", "deepserve"),
        ("InferenceService", "deepserve"),
        ("Service", "deepserve"),
        ("Service", "deepserve-gpu"),
    ]


@pytest.mark.parametrize("name", ["deepserve", "deepserve-gpu"])
def test_probes_point_at_the_real_health_endpoints(name: str) -> None:
    routes = app_routes()
    assert {"/health/live", "/health/ready", "/metrics"} <= routes
    pod = one("Deployment", name)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": dockerfile_expose()}
    expected = {
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
        "startupProbe": "/health/live",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes
        assert ports.get(get["port"], get["port"]) == dockerfile_expose()
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "room to load the repository"

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == dockerfile_expose()
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("name", ["deepserve", "deepserve-gpu"])
def test_deployment_runs_as_the_images_unprivileged_user(name: str) -> None:
    spec = one("Deployment", name)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    if security.get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), (name, kind)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SERVE_MODEL_REPOSITORY"] == "/srv/models"


def test_image_tags_follow_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert one("Deployment", "deepserve")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"deepserve:{version}"
    )
    gpu = one("Deployment", "deepserve-gpu")["spec"]["template"]["spec"]["containers"][0]
    assert gpu["image"] == f"deepserve:{version}-gpu"


def test_gpu_deployment_asks_for_one_gpu() -> None:
    spec = one("Deployment", "deepserve-gpu")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SERVE_DEVICE"] == "cuda"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


@pytest.mark.parametrize(
    ("service", "deployment"), [("deepserve", "deepserve"), ("deepserve-gpu", "deepserve-gpu")]
)
def test_service_selects_its_deployment(service: str, deployment: str) -> None:
    svc = one("Service", service)["spec"]
    pods = one("Deployment", deployment)["spec"]
    labels = pods["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items()
    assert pods["selector"]["matchLabels"].items() <= labels.items()
    # The CPU and GPU services must not pick up each other's pods.
    for other in deployments():
        if other["metadata"]["name"] != deployment:
            assert not svc["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()
    (port,) = svc["ports"]
    container_ports = {
        p["name"]: p["containerPort"] for p in pods["template"]["spec"]["containers"][0]["ports"]
    }
    assert port["targetPort"] in container_ports
    assert port["port"] == container_ports[port["targetPort"]] == dockerfile_expose()


def test_hpa_scales_the_cpu_deployment_on_cpu_utilisation() -> None:
    hpa = one("HorizontalPodAutoscaler", "deepserve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "deepserve"}
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    deployment = one("Deployment", "deepserve")
    # Utilisation is relative to the request, so the container needs one; and no fixed replica count
    # that every `kubectl apply` would reset under the autoscaler.
    assert "cpu" in deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert "replicas" not in deployment["spec"]


def test_kserve_inference_service() -> None:
    """No InferenceService schema is available offline, so: the shape KServe's v1beta1 API defines
    for a custom predictor, and its pod-level parts through the core Pod schema."""
    isvc = one("InferenceService", "deepserve")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    component_fields = {"minReplicas", "maxReplicas", "containerConcurrency"}
    assert set(predictor) <= component_fields | {"containers", "securityContext"}, set(predictor)
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]

    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the name KServe treats as the predictor
    cpu_image = one("Deployment", "deepserve")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["image"] == cpu_image
    (port,) = container["ports"]
    assert port["containerPort"] == dockerfile_expose()
    assert port["name"] == "http1"  # Knative: HTTP/1.1 on the one serving port
    env = {e["name"]: e["value"] for e in container["env"]}
    # A custom predictor's protocol version is the PROTOCOL env var (KServe's CustomPredictor.GetProtocol).
    assert env["PROTOCOL"] == "v2"
    assert {"/v2/health/ready", "/v2/models/{name}/infer"} <= app_routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert predictor["securityContext"]["runAsUser"] == dockerfile_uid()

    # The inline PodSpec part of the predictor, validated as a Pod against the Kubernetes schemas.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {"containers": predictor["containers"], "securityContext": predictor["securityContext"]},
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
