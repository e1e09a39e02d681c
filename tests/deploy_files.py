"""The files of deploy/, read the way their own tools read them; shared by the deploy tests.

Compose files are rendered by Docker Compose itself and kustomizations by kubectl's kustomize, so
the tests look at what a user's `docker compose up` or `kubectl apply -k` would get.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import compose
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "triton.json"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
OBJECT_STORAGE = K8S / "components" / "object-storage"
PROMETHEUS_ADAPTER = K8S / "prometheus-adapter"
KSERVE = (K8S / "kserve" / "base", K8S / "kserve" / "canary")
SCHEMAS = Path(__file__).resolve().parent / "deploy_schemas"
# What the image runs instead of tritonserver: it adds explicit model control and the models.
ENTRYPOINT = DEPLOY / "resnet-serve-triton"

# The admin APIs that only answer requests carrying the key (issue 12).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_KEY_HEADER = "admin-key"
# Triton expects the gRPC metadata under this prefix.
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"

BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
HADOLINT = BIN / "hadolint"
# The wheel's `docker-compose` console script drops the binary's exit status; run the binary.
DOCKER_COMPOSE = Path(compose.__file__).parent / "docker-compose"


def run(command: Sequence[str | Path], **options: object) -> subprocess.CompletedProcess[str]:
    """Run a tool and return what it did, whatever its exit status (the caller checks)."""
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, **options)


def render_compose(
    *, profiles: Iterable[str] = (), environment: Mapping[str, str], file: Path = COMPOSE_FILE
) -> dict:
    """`docker compose config` of `file` for these profiles (none: the .env default, GPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "TRITON_"))}
    command: list[str | Path] = [DOCKER_COMPOSE, "-f", file]
    for profile in profiles:
        command += ["--profile", profile]
    done = run([*command, "config", "--format", "json"], env={**env, **environment})
    if done.returncode != 0:
        raise ValueError(done.stderr.strip())
    return json.loads(done.stdout)


def kustomize(directory: Path) -> list[dict]:
    """The manifests `kubectl kustomize directory` renders."""
    done = run([KUBECTL, "kustomize", directory])
    if done.returncode != 0:
        raise ValueError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def with_object_storage(overlay: str, folder: Path) -> Path:
    """A kustomization in `folder` that adds the object-storage component to an overlay, as the
    component's own comment tells users to."""
    # kustomize takes only relative paths to other kustomizations.
    relative = Path(os.path.relpath(K8S, folder))
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(relative / "overlays" / overlay)],
        "components": [str(relative / "components" / "object-storage")],
    }))
    return folder


def only(manifests: Iterable[dict], kind: str) -> dict:
    (found,) = [m for m in manifests if m["kind"] == kind]
    return found


def container(pod_spec: Mapping, name: str) -> dict:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


def triton_container(manifests: Iterable[dict]) -> dict:
    return container(only(manifests, "Deployment")["spec"]["template"]["spec"], "triton")


def environment_of(entry: Mapping, manifests: Iterable[dict], *, secrets: Mapping[str, str]) -> dict[str, str]:
    """The values of a container's `env` entries, ConfigMap references resolved from the rendered
    manifests and Secret references from `secrets` (by key), as the kubelet would."""
    config_maps = {m["metadata"]["name"]: m.get("data", {}) for m in manifests if m["kind"] == "ConfigMap"}
    values = {}
    for variable in entry.get("env", []):
        source = variable.get("valueFrom", {})
        if "value" in variable:
            values[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in source:
            reference = source["configMapKeyRef"]
            values[variable["name"]] = config_maps[reference["name"]][reference["key"]]
        else:
            values[variable["name"]] = secrets[source["secretKeyRef"]["key"]]
    return values


def expand(arguments: Iterable[str], environment: Mapping[str, str]) -> list[str]:
    """Kubernetes' `$(VAR)` expansion of container arguments; an unknown name is an error here
    (Kubernetes would pass it on literally, which is never what our files mean)."""
    return [re.sub(r"\$\((\w+)\)", lambda match: environment[match[1]], a) for a in arguments]


def restricted_api_arguments(key: str) -> list[str]:
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={key}",
    ]


def tritonserver_arguments(
    command: Sequence[str], environment: Mapping[str, str], *, repository: Path | None = None
) -> list[str]:
    """The arguments tritonserver gets from a deploy file's command (``resnet-serve-triton`` and
    its arguments), found by running deploy/resnet-serve-triton itself with a stand-in for
    tritonserver that prints them; ``repository`` replaces the one the arguments name (the
    script looks into it for the image pipeline)."""
    if command[0] != ENTRYPOINT.name:
        raise ValueError(f"{command[0]!r} runs instead of {ENTRYPOINT.name}")
    arguments = [a for a in command[1:] if repository is None or not a.startswith(("--model-repository=",
                                                                                    "--model-store="))]
    if repository is not None:
        arguments.append(f"--model-repository={repository}")
    with tempfile.TemporaryDirectory() as folder:
        stand_in = Path(folder) / "tritonserver"
        stand_in.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
        stand_in.chmod(0o755)
        done = run(["sh", ENTRYPOINT, *arguments],
                   env={"PATH": os.environ["PATH"], **environment, "TRITONSERVER": str(stand_in)})
    if done.returncode != 0:
        raise ValueError(done.stderr.strip())
    return json.loads(done.stdout)


def loaded_models(arguments: Iterable[str]) -> list[str]:
    return [a.split("=", 1)[1] for a in arguments if a.startswith("--load-model=")]


def option(arguments: Iterable[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in arguments if a.startswith(f"{name}=")]
    return value


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def adapter_rules() -> list[dict]:
    config_map = only(kustomize(PROMETHEUS_ADAPTER), "ConfigMap")
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def adapter_query(rule: Mapping, *, label_matchers: str, group_by: str) -> str:
    """The PromQL prometheus-adapter sends for one rule: its Go template filled in as the adapter
    fills it for a Pods metric of the HPA."""
    return rule["metricsQuery"].replace("<<.LabelMatchers>>", label_matchers).replace("<<.GroupBy>>", group_by)


def promql_queries(*, adapter_labels: str = 'namespace="default",pod=~"resnet-serve-triton-.*"') -> dict[str, str]:
    """Every PromQL expression of the dashboard, the alert rules and the autoscaler's adapter rule,
    keyed by where it comes from."""
    queries = {
        f"dashboard {panel['title']!r} {target['refId']}": target["expr"]
        for panel in dashboard()["panels"] for target in panel["targets"]
    }
    queries |= {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    for rule in adapter_rules():
        queries[f"adapter {rule['name']['as']}"] = adapter_query(rule, label_matchers=adapter_labels, group_by="pod")
        queries[f"adapter {rule['name']['as']} series"] = rule["seriesQuery"]
    return queries


def triton_metric_names(expression: str) -> set[str]:
    """The Triton metrics an expression reads: every Triton metric is named nv_<...>, and no label,
    function or keyword of ours starts so."""
    return set(re.findall(r"\bnv_[a-z_]+\b", expression))
