"""The Triton arguments of deploy/ on the real embedded tritonserver, and the real Prometheus
(Debian's) scraping it.

The server runs exactly the arguments that compose, the Kubernetes Deployment and the KServe
InferenceService give Triton, with only what differs on this machine replaced: the repository
path, the ports (free ones, on 127.0.0.1) and the backend directory of the embedded server.
The repository holds the trained test ResNet-20 under the name the files load, every other name
they load, and a broken entry that explicit model control must keep from stopping the server.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from deploy_files import (
    ADMIN_KEY_HEADER,
    ALERT_RULES,
    GRPC_ADMIN_KEY_HEADER,
    K8S,
    KSERVE,
    adapter_query,
    adapter_rules,
    environment_of,
    expand,
    kustomize,
    loaded_models,
    only,
    promql_queries,
    render_compose,
    triton_container,
    triton_metric_names,
    tritonserver_arguments,
)
from tritonclient.utils import InferenceServerException

from resnet_serve.errors import ServerError
from resnet_serve.pipeline import ExportOptions, export_to_repository
from resnet_serve.selection import ImageSelection
from resnet_serve.triton.server import TritonInstallation, TritonServer, find_free_port, find_free_ports
from resnet_serve.triton.serving import ServingOptions

pytestmark = pytest.mark.triton

KEY = "integration-test-admin-key"
# What KServe's kserve-tritonserver ClusterServingRuntime runs before the InferenceService's own
# arguments (kserve/kserve v0.20.0, config/runtimes/kserve-tritonserver.yaml).
KSERVE_RUNTIME_ARGUMENTS = ["--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080",
                            "--allow-grpc=true", "--allow-http=true"]
# Triton exports GPU metrics only when it sees a GPU; this embedded server runs on CPUs.
EXEMPT_WITHOUT_GPU = {"nv_gpu_utilization": "a GPU metric: only a server that sees a GPU exports it"}
# Options that differ on this machine; the test sets its own.
LOCAL_OPTIONS = ("--model-repository", "--model-store", "--http-port", "--grpc-port", "--metrics-port",
                 "--http-address", "--grpc-address", "--metrics-address")


class DeployedTriton(TritonServer):
    """The embedded tritonserver started with a deploy file's arguments instead of our own."""

    def __init__(self, arguments: Sequence[str], *, repository: Path, log_file: Path) -> None:
        http_port, grpc_port, metrics_port = find_free_ports(3)
        # The models are given only so that readiness waits for them; command() runs the arguments.
        super().__init__(repository=repository, http_port=http_port, grpc_port=grpc_port,
                         metrics_port=metrics_port, model_control="explicit",
                         load_models=loaded_models(arguments), log_file=log_file)
        self.arguments = [a for a in arguments if a.split("=", 1)[0] not in LOCAL_OPTIONS]

    def command(
        self, installation: TritonInstallation, backend_directory: Path, *, model_repository: Path
    ) -> list[str]:
        return [
            str(installation.binary), *self.arguments,
            f"--model-repository={model_repository}", f"--backend-directory={backend_directory}",
            *(f"--{kind}-port={port}" for kind, port in self.ports.items()),
            *(f"--{kind}-address=127.0.0.1" for kind in self.ports),
        ]


def compose_service() -> dict:
    return render_compose(profiles=("cpu",), environment={"TRITON_ADMIN_KEY": KEY})["services"]["triton-cpu"]


def compose_arguments(repository: Path) -> list[str]:
    service = compose_service()
    return tritonserver_arguments(service["command"], service["environment"], repository=repository)


def deployment_arguments(repository: Path) -> list[str]:
    manifests = kustomize(K8S / "overlays" / "cpu")
    triton = triton_container(manifests)
    environment = environment_of(triton, manifests, secrets={"admin-key": KEY})
    return tritonserver_arguments([*triton["command"], *expand(triton["args"], environment)], environment,
                                  repository=repository)


def inferenceservice_arguments(repository: Path) -> list[str]:
    model = only(kustomize(KSERVE[0]), "InferenceService")["spec"]["predictor"]["model"]
    environment = environment_of(model, [], secrets={"admin-key": KEY})
    return tritonserver_arguments(
        [*model["command"], "tritonserver", *KSERVE_RUNTIME_ARGUMENTS, *expand(model["args"], environment)],
        environment, repository=repository)


def export(checkpoint: Path, repository: Path, *, image_pipeline: bool) -> list[str]:
    """The entries an export of the model the deploy files name writes, beside a broken entry."""
    classifier = compose_service()["environment"]["TRITON_MODEL"]
    report = export_to_repository(
        checkpoint=checkpoint, repository=repository,
        options=ExportOptions(name=classifier, selection=ImageSelection(verify_images=16),
                              serving=ServingOptions(image_pipeline=image_pipeline)),
    )
    (repository / "broken").mkdir()
    (repository / "broken" / "config.pbtxt").write_text("this is not a model configuration\n")
    return [classifier, *(path.name for path in report.image_pipeline or ())]


@pytest.fixture(scope="module")
def repository(trained_resnet20: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model the deploy files load, and one broken entry they do not."""
    repository = tmp_path_factory.mktemp("deploy-repository")
    exported = export(trained_resnet20, repository, image_pipeline=True)
    assert loaded_models(compose_arguments(repository)) == exported
    return repository


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[DeployedTriton]:
    with DeployedTriton(compose_arguments(repository), repository=repository,
                        log_file=repository.parent / "compose-triton.log") as running:
        yield running


def post(url: str, *, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=b"{}", headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def assert_admin_apis_need_the_key(server: TritonServer) -> list[dict]:
    """The repository index is refused over HTTP and gRPC without the key; with it, it answers."""
    url = f"http://{server.urls.http}/v2/repository/index"
    status, body = post(url)
    assert status == 403 and ADMIN_KEY_HEADER in body.decode()
    assert post(url, headers={ADMIN_KEY_HEADER: "wrong"})[0] == 403
    client = grpcclient.InferenceServerClient(server.urls.grpc)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_repository_index(headers={ADMIN_KEY_HEADER: KEY})
    over_grpc = client.get_model_repository_index(headers={GRPC_ADMIN_KEY_HEADER: KEY}, as_json=True)["models"]
    status, body = post(url, headers={ADMIN_KEY_HEADER: KEY})
    assert status == 200
    index = json.loads(body)
    assert sorted(m["name"] for m in over_grpc) == sorted(m["name"] for m in index)
    return index


def classify(server: TritonServer, model: str, count: int) -> None:
    client = httpclient.InferenceServerClient(server.urls.http)
    for _ in range(count):
        request = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
        request.set_data_from_numpy(np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32))
        client.infer(model, [request])


def test_compose_arguments_load_exactly_the_named_models_beside_a_broken_entry(server: DeployedTriton):
    index = assert_admin_apis_need_the_key(server)
    states = {m["name"]: m.get("state") for m in index}
    assert states == {name: "READY" for name in server.load_models}
    # The embedded server's proxy repository leaves the broken entry out, and says why.
    assert [(s.name, s.reason.split(":")[0]) for s in server.skipped] == [("broken", "config.pbtxt")]


@pytest.mark.parametrize("arguments", [deployment_arguments, inferenceservice_arguments],
                         ids=["k8s-deployment", "kserve-inferenceservice"])
def test_kubernetes_arguments_are_accepted(repository: Path, arguments, tmp_path: Path):
    with DeployedTriton(arguments(repository), repository=repository, log_file=tmp_path / "triton.log") as deployed:
        assert list(deployed.load_models) == loaded_models(compose_arguments(repository))
        index = assert_admin_apis_need_the_key(deployed)
        assert {m["name"] for m in index if m.get("state") == "READY"} == set(deployed.load_models)


@pytest.mark.parametrize("arguments", [compose_arguments, deployment_arguments], ids=["compose", "k8s-deployment"])
def test_an_export_without_the_image_pipeline_is_served_by_the_same_files(
    trained_resnet20: Path, arguments, tmp_path: Path
):
    """Loading the -preprocess and -image entries of an export that has none made tritonserver exit at start."""
    repository = tmp_path / "repository"
    exported = export(trained_resnet20, repository, image_pipeline=False)
    given = arguments(repository)
    assert loaded_models(given) == exported and len(exported) == 1
    with DeployedTriton(given, repository=repository, log_file=tmp_path / "triton.log") as deployed:
        index = assert_admin_apis_need_the_key(deployed)
        assert {m["name"]: m.get("state") for m in index} == {exported[0]: "READY"}


def test_the_server_rejects_broken_arguments(repository: Path, tmp_path: Path):
    """The checks above mean something: a misspelt restricted API stops tritonserver at once."""
    broken = [a.replace("shared-memory", "shared-memroy") for a in compose_arguments(repository)]
    assert broken != compose_arguments(repository)
    log = tmp_path / "triton.log"
    with pytest.raises(ServerError, match="exited"), DeployedTriton(broken, repository=repository, log_file=log):
        pass
    assert "unknown restricted api 'shared-memroy'" in log.read_text()


def exported_metric_names(server: TritonServer) -> set[str]:
    """The metric families of the server's /metrics (each has its own `# TYPE` line)."""
    with urllib.request.urlopen(f"http://{server.urls.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_metric_that_dashboard_alerts_and_autoscaler_query_exists(server: DeployedTriton):
    classify(server, server.load_models[0], 5)
    queried = set().union(*map(triton_metric_names, promql_queries().values()))
    exported = exported_metric_names(server)
    missing = queried - exported
    assert missing == set(EXEMPT_WITHOUT_GPU), f"not on the server's /metrics: {sorted(missing)}"
    assert not [name for name in exported if name.startswith("nv_gpu_")]


class Prometheus:
    """Debian's real prometheus scraping one Triton every second, with deploy/'s alert rules."""

    def __init__(self, *, metrics: str, folder: Path, labels: dict[str, str]) -> None:
        self.port = find_free_port()
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERT_RULES)],
            "scrape_configs": [{"job_name": "triton", "static_configs": [{"targets": [metrics], "labels": labels}]}],
        }))
        self.log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **parameters: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(parameters)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expression: str) -> list[dict]:
        return self.get("/api/v1/query", query=expression)["result"]

    def wait_for(self, expression: str, predicate, *, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.query(expression)
                if predicate(result):
                    return result
            except (urllib.error.URLError, ConnectionError):
                assert self.process.poll() is None, "prometheus exited"
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus never answered {expression!r} as expected")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def values(result: list[dict]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def test_prometheus_reads_requests_and_queue_time_back_and_every_query_answers(server: DeployedTriton, tmp_path: Path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: `make system-packages` installs Debian's prometheus")
    model = server.load_models[0]
    # The labels the ServiceMonitor's scrape gives every series, which the adapter's rule selects by.
    labels = {"namespace": "default", "pod": "resnet-serve-triton-0"}
    prometheus = Prometheus(metrics=server.urls.metrics, folder=tmp_path, labels=labels)
    try:
        before = prometheus.wait_for(f'nv_inference_request_success{{model="{model}"}}', bool)
        requests = 40
        for _ in range(4):  # spread over several scrapes so that rate() has points to work on
            classify(server, model, requests // 4)
            time.sleep(1.0)
        success = prometheus.wait_for(
            f'nv_inference_request_success{{model="{model}"}}',
            lambda r: r and values(r)[0] >= values(before)[0] + requests,
        )
        queue = prometheus.query(f'nv_inference_queue_duration_us{{model="{model}"}}')
        assert values(success)[0] >= requests and values(queue)[0] > 0

        for source, expression in promql_queries(
            adapter_labels=f'namespace="{labels["namespace"]}",pod=~"{labels["pod"]}"'
        ).items():
            # Prometheus evaluates every expression; an alert's answers only while it fires, so
            # the alert rules' own evaluation (their health) is checked below instead.
            result = prometheus.query(expression)
            if source.startswith("alert"):
                continue
            if triton_metric_names(expression) & set(EXEMPT_WITHOUT_GPU):
                assert result == [], f"{source}: {EXEMPT_WITHOUT_GPU}"
                continue
            assert result, f"{source}: no series for {expression!r}"
            if "model" in result[0]["metric"]:
                ours = [s for s in result if s["metric"].get("model") == model]
                assert ours and all(math.isfinite(v) and v >= 0 for v in values(ours)), f"{source}: {ours}"

        (rule,) = adapter_rules()
        per_pod = prometheus.query(adapter_query(
            rule, label_matchers=f'namespace="{labels["namespace"]}",pod=~"{labels["pod"]}"', group_by="pod"))
        assert [s["metric"] for s in per_pod] == [{"pod": labels["pod"]}] and values(per_pod)[0] > 0

        rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
        assert len(rules) == 3 and all(r["health"] == "ok" for r in rules), rules
        assert not prometheus.query('ALERTS{alertstate="firing"}')
    finally:
        prometheus.stop()
