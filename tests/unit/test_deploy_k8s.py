"""deploy/k8s rendered by kubectl's kustomize and checked offline: built-in kinds against the API
schemas of a pinned Kubernetes release (kubernetes-validate), custom resources (KServe's
InferenceService, prometheus-operator's ServiceMonitor) against their published CRD schemas, which
tests/deploy_schemas/ keeps with their source; then what the manifests promise (probes, security,
scaling, storage) is checked on the rendered result."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_files import (
    ENTRYPOINT,
    K8S,
    KSERVE,
    OVERLAYS,
    PROMETHEUS_ADAPTER,
    SCHEMAS,
    adapter_rules,
    container,
    environment_of,
    expand,
    kustomize,
    loaded_models,
    only,
    option,
    restricted_api_arguments,
    triton_container,
    tritonserver_arguments,
    with_object_storage,
)

# The oldest Kubernetes minor release we claim: every managed Kubernetes offered it in 2026.
KUBERNETES_VERSION = "1.33.0"
CUSTOM_RESOURCE_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-inferenceservice-v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator-servicemonitor-v1.json",
}
KEY = "k8s-test-key"


def strict(schema: object) -> object:
    """A CRD schema that rejects unknown fields, as the API server does with strict field
    validation (`kubectl apply --validate=strict`); plain JSON Schema would let a typo through."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        result["additionalProperties"] = False
    return result


def custom_resource_validator(manifest: dict) -> jsonschema.Draft7Validator:
    document = json.loads((SCHEMAS / CUSTOM_RESOURCE_SCHEMAS[manifest["apiVersion"], manifest["kind"]]).read_text())
    assert {"repository", "path", "commit", "version"} <= set(document["source"])
    return jsonschema.Draft7Validator(strict(document["openAPIV3Schema"]))


def validate(manifest: dict) -> None:
    """Raise if the manifest breaks its schema: the pinned Kubernetes API's or its CRD's."""
    if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCE_SCHEMAS:
        custom_resource_validator(manifest).validate(manifest)
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def object_storage(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return kustomize(with_object_storage("gpu", tmp_path_factory.mktemp("object-storage")))


RENDERINGS: dict[str, Callable[[pytest.TempPathFactory], list[dict]]] = {
    **{f"overlays/{o}": (lambda _, o=o: kustomize(K8S / "overlays" / o)) for o in OVERLAYS},
    "overlays/gpu + components/object-storage": object_storage,
    "prometheus-adapter": lambda _: kustomize(PROMETHEUS_ADAPTER),
    **{f"kserve/{f.name}": (lambda _, f=f: kustomize(f)) for f in KSERVE},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    return {name: render(tmp_path_factory) for name, render in RENDERINGS.items()}


@pytest.fixture(scope="module")
def overlays(rendered: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {o: rendered[f"overlays/{o}"] for o in OVERLAYS}


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_rendered_manifest_validates_against_its_schema(rendered: dict[str, list[dict]], name: str):
    assert rendered[name]
    for manifest in rendered[name]:
        try:
            validate(manifest)
        except (jsonschema.ValidationError, kubernetes_validate.utils.SchemaNotFoundError) as error:
            pytest.fail(f"{name}: {manifest['kind']} {manifest['metadata']['name']}: {error}")


def test_kustomize_rejects_a_broken_kustomization(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["deployment.yaml"]}))
    with pytest.raises(ValueError, match="deployment.yaml"):
        kustomize(tmp_path)


def test_kubernetes_validate_rejects_a_broken_deployment(overlays: dict[str, list[dict]]):
    deployment = copy.deepcopy(only(overlays["cpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = ["http"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    deployment = copy.deepcopy(only(overlays["cpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        validate(deployment)


def test_crd_schemas_reject_broken_custom_resources(rendered: dict[str, list[dict]], overlays: dict[str, list[dict]]):
    service = copy.deepcopy(only(rendered["kserve/canary"], "InferenceService"))
    service["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        validate(service)
    service = copy.deepcopy(only(rendered["kserve/base"], "InferenceService"))
    service["spec"]["predictor"]["model"]["storageURI"] = service["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate(service)
    monitor = copy.deepcopy(only(overlays["cpu"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(monitor)


def test_overlays_differ_only_in_resources_and_gpu_tolerations(overlays: dict[str, list[dict]]):
    cpu, gpu = (triton_container(overlays[o]) for o in OVERLAYS)
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {k: v for k, v in cpu.items() if k != "resources"} == {k: v for k, v in gpu.items() if k != "resources"}
    (toleration,) = only(overlays["gpu"], "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert toleration["key"] == "nvidia.com/gpu"
    assert [m["kind"] for m in overlays["cpu"]] == [m["kind"] for m in overlays["gpu"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_triton_liveness_readiness_and_startup(overlays: dict[str, list[dict]], overlay: str):
    triton = triton_container(overlays[overlay])
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    # Model loading gets minutes before the liveness probe may restart the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_runs_non_root_read_only_without_capabilities(overlays: dict[str, list[dict]], overlay: str):
    pod = only(overlays[overlay], "Deployment")["spec"]["template"]["spec"]
    triton = container(pod, "triton")
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    context = triton["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    # With a read-only root, Triton writes only to /tmp and its python backend to /dev/shm.
    assert set(mounts) == {"/models", "/tmp", "/dev/shm"} and mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["name"] for m in mounts.values()} == set(volumes)
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    claim = only(overlays[overlay], "PersistentVolumeClaim")
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_outlive_tritons_exit_timeout(overlays: dict[str, list[dict]], overlay: str):
    pod = only(overlays[overlay], "Deployment")["spec"]["template"]["spec"]
    exit_timeout = int(option(container(pod, "triton")["args"], "--exit-timeout-secs"))
    assert pod["terminationGracePeriodSeconds"] > exit_timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_arguments_load_the_configured_models_with_restricted_admin_apis(
    overlays: dict[str, list[dict]], overlay: str, tmp_path: Path
):
    manifests = overlays[overlay]
    triton = triton_container(manifests)
    assert triton["command"] == [ENTRYPOINT.name]
    # The admin key is only ever a reference to a Secret.
    (key,) = [e for e in triton["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert set(key) == {"name", "valueFrom"} and set(key["valueFrom"]) == {"secretKeyRef"}
    environment = environment_of(triton, manifests, secrets={"admin-key": KEY})
    given = expand(triton["args"], environment)
    assert option(given, "--model-repository") == "/models"
    # The entrypoint loads the image pipeline where the export wrote it: here, a repository with one.
    repository = tmp_path / "models"
    for entry in ("resnet20-fashion", "resnet20-fashion-preprocess", "resnet20-fashion-image"):
        (repository / entry).mkdir(parents=True)
        (repository / entry / "config.pbtxt").write_text(f'name: "{entry}"\n')
    arguments = tritonserver_arguments([*triton["command"], *given], environment, repository=repository)
    assert option(arguments, "--model-control-mode") == "explicit"
    assert loaded_models(arguments) == ["resnet20-fashion", "resnet20-fashion-preprocess", "resnet20-fashion-image"]
    assert set(restricted_api_arguments(KEY)) <= set(arguments)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_servicemonitor_select_the_triton_pods(overlays: dict[str, list[dict]], overlay: str):
    manifests = overlays[overlay]
    deployment = only(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = only(manifests, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc", "metrics"}
    budget = only(manifests, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items() and budget["maxUnavailable"] == 1
    monitor = only(manifests, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_scales_the_deployment_on_the_adapters_queue_time_metric(
    overlays: dict[str, list[dict]], overlay: str
):
    manifests = overlays[overlay]
    autoscaler = only(manifests, "HorizontalPodAutoscaler")["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": only(manifests, "Deployment")["metadata"]["name"]}
    assert autoscaler["minReplicas"] >= 2 and autoscaler["maxReplicas"] > autoscaler["minReplicas"]
    (metric,) = autoscaler["metrics"]
    (rule,) = adapter_rules()
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    # The adapter gives each pod's value from the series the ServiceMonitor's labels name.
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"] and "nv_inference_request_success" in rule["metricsQuery"]


def test_object_storage_replaces_the_claim_with_a_bucket_and_secret(rendered: dict[str, list[dict]]):
    manifests = rendered["overlays/gpu + components/object-storage"]
    assert "PersistentVolumeClaim" not in [m["kind"] for m in manifests]
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    triton = container(pod, "triton")
    arguments = expand(triton["args"], environment_of(triton, manifests, secrets={"admin-key": KEY}))
    assert option(arguments, "--model-repository").startswith("s3://")
    assert triton["envFrom"] == [{"secretRef": {"name": "resnet-serve-object-storage"}}]
    assert {m["mountPath"] for m in triton["volumeMounts"]} == {"/tmp", "/dev/shm"}
    assert {m["name"] for m in triton["volumeMounts"]} == {v["name"] for v in pod["volumes"]}


def test_kserve_serves_the_triton_runtime_over_v2_with_a_canary(rendered: dict[str, list[dict]], overlays):
    base, canary = (only(rendered[f"kserve/{f.name}"], "InferenceService")["spec"]["predictor"] for f in KSERVE)
    model = base["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver" and model["storageUri"].startswith("s3://")
    assert "canaryTrafficPercent" not in base and 0 < canary["canaryTrafficPercent"] < 100
    assert canary["model"]["storageUri"] != model["storageUri"]
    assert {k: v for k, v in canary["model"].items() if k != "storageUri"} == {
        k: v for k, v in model.items() if k != "storageUri"}
    # The same Triton options as the Deployment (KServe supplies the repository and ports).
    deployment = triton_container(overlays["cpu"])
    assert model["command"] == deployment["command"] == [ENTRYPOINT.name]
    assert model["args"] == [a for a in deployment["args"] if not a.startswith("--model-repository")]
    account = only(rendered["kserve/base"], "ServiceAccount")
    assert base["serviceAccountName"] == account["metadata"]["name"]
    assert account["secrets"] == [{"name": "resnet-serve-object-storage"}]
    # KServe's runtime gives "tritonserver --model-store=/mnt/models ..." before these; the files are local there.
    environment = environment_of(model, [], secrets={"admin-key": KEY})
    arguments = tritonserver_arguments(
        [ENTRYPOINT.name, "tritonserver", "--model-store=/mnt/models", *expand(model["args"], environment)], environment)
    assert loaded_models(arguments) == ["resnet20-fashion"] and "tritonserver" not in arguments
