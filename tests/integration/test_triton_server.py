"""The real embedded tritonserver serving freshly written repository entries.

One server per module (started once, on free ports) serves three `onnxruntime` entries, each
through its python-backend proxy:
  tiny          the tiny classifier with the default batching settings
  tiny_batched  the same ONNX with a long queue delay, so concurrent requests share a batch
  fragile       a model whose onnxruntime run fails for some inputs (a "bad request")
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hostile import dead_pid
from openvino_entry import convert_to_openvino_entry
from samples import fashion_mnist
from tiny_onnx import (
    CLASS_NAMES,
    INPUT_SHAPE,
    PREPROCESSING,
    TinyClassifier,
    export_tiny_classifier,
    write_entry,
)
from torch import nn
from tritonclient.utils import InferenceServerException

from resnet_serve.errors import ServerError
from resnet_serve.triton import ADMIN_KEY_VARIABLE
from resnet_serve.triton.server import TritonServer, find_free_ports, runtime_folder
from resnet_serve.triton.serving import ONNXRUNTIME, PYTHON_ONNXRUNTIME

pytestmark = pytest.mark.triton

TOLERANCE = 1e-4


class Fragile(nn.Module):
    """Looks up its logits by the first pixel: a pixel outside 0..9 makes onnxruntime fail."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()] + x.mean(dim=(1, 2, 3)).unsqueeze(1)


def export_fragile(path: Path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Fragile().eval(), (torch.zeros(1, *INPUT_SHAPE),), str(path), dynamo=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def add_entry(repository: Path, name: str, onnx_path: Path, **options: object) -> None:
    write_entry(
        repository=repository, name=name, model_file=onnx_path, class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING,
        metadata={"architecture": "tiny-cnn"}, **{"target": ONNXRUNTIME, **options},  # type: ignore[arg-type]
    )


def live_processes_in_group(pgid: int) -> list[str]:
    """Names of the processes of a process group that are still running (not zombies)."""
    names = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        state, _parent, group = rest.split()[:3]
        if int(group) == pgid and state != "Z":
            names.append(name)
    return names


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyClassifier]:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return path, export_tiny_classifier(path)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, TinyClassifier]
) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("repository")
    onnx_path, _ = tiny
    fragile_path = onnx_path.with_name("fragile.onnx")
    export_fragile(fragile_path)
    add_entry(repository, "tiny", onnx_path)
    add_entry(repository, "tiny_batched", onnx_path, max_queue_delay_us=200_000,
                preferred_batch_sizes=[4])
    add_entry(repository, "fragile", fragile_path, max_queue_delay_us=200_000,
                preferred_batch_sizes=[3])
    http_port, grpc_port, metrics_port = find_free_ports(3)
    with TritonServer(
        repository=repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        log_file=repository.parent / "tritonserver.log",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def reference(tiny: tuple[Path, TinyClassifier]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, onnxruntime logits and PyTorch logits computed in this process."""
    onnx_path, model = tiny
    images = fashion_mnist(8)
    onnx_logits = ort.InferenceSession(str(onnx_path)).run(["logits"], {"input": images})[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(images)).numpy()
    return images, onnx_logits, torch_logits


def http_infer(server: TritonServer, model: str, images: np.ndarray, **output: int) -> object:
    client = httpclient.InferenceServerClient(server.urls.http)
    request = httpclient.InferInput("input", list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    return client.infer(model, [request], outputs=[httpclient.InferRequestedOutput("logits",
                                                                                  **output)])


def grpc_infer(server: TritonServer, model: str, images: np.ndarray, **output: int) -> object:
    client = grpcclient.InferenceServerClient(server.urls.grpc)
    request = grpcclient.InferInput("input", list(images.shape), "FP32")
    request.set_data_from_numpy(images)
    return client.infer(model, [request], outputs=[grpcclient.InferRequestedOutput("logits",
                                                                                  **output)])


@pytest.mark.parametrize("infer", [http_infer, grpc_infer], ids=["http", "grpc"])
@pytest.mark.parametrize("batch", [1, 8])
def test_logits_match_onnxruntime_and_pytorch(
    server: TritonServer, reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    infer: object, batch: int,
) -> None:
    images, onnx_logits, torch_logits = reference

    logits = infer(server, "tiny", images[:batch]).as_numpy("logits")  # type: ignore[operator]

    assert logits.shape == (batch, len(CLASS_NAMES))
    assert np.abs(logits - onnx_logits[:batch]).max() <= TOLERANCE
    assert np.abs(logits - torch_logits[:batch]).max() <= TOLERANCE


@pytest.mark.parametrize("infer", [http_infer, grpc_infer], ids=["http", "grpc"])
def test_classification_extension_returns_labelled_top3(
    server: TritonServer, reference: tuple[np.ndarray, np.ndarray, np.ndarray], infer: object
) -> None:
    images, onnx_logits, _ = reference

    top3 = infer(server, "tiny", images, class_count=3).as_numpy("logits")  # type: ignore[operator]

    assert top3.shape == (len(images), 3)
    for row, expected in zip(top3, onnx_logits, strict=True):
        # Each entry is b"<score>:<index>:<label>", best first.
        entries = [entry.decode().split(":") for entry in row]
        indices = [int(index) for _, index, _ in entries]
        assert indices == list(np.argsort(-expected)[:3])
        assert [label for _, _, label in entries] == [CLASS_NAMES[i] for i in indices]
        assert [float(score) for score, _, _ in entries] == pytest.approx(
            expected[indices], abs=1e-4
        )


def test_server_model_config_carries_preprocessing(server: TritonServer) -> None:
    over_http = httpclient.InferenceServerClient(server.urls.http).get_model_config("tiny")
    over_grpc = grpcclient.InferenceServerClient(server.urls.grpc).get_model_config(
        "tiny", as_json=True
    )["config"]

    for config in (over_http, over_grpc):
        assert json.loads(config["parameters"]["preprocessing"]["string_value"]) == PREPROCESSING.to_dict()
        assert config["parameters"]["architecture"]["string_value"] == "tiny-cnn"
        assert config["output"][0]["label_filename"] == "labels.txt"


def test_concurrent_requests_share_one_onnxruntime_run(
    server: TritonServer, reference: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    images, onnx_logits, _ = reference
    client = httpclient.InferenceServerClient(server.urls.http, concurrency=4)
    before = client.get_inference_statistics("tiny_batched")["model_stats"][0]

    pending = []
    for i in range(4):
        request = httpclient.InferInput("input", [1, *INPUT_SHAPE], "FP32")
        request.set_data_from_numpy(images[i:i + 1])
        pending.append(client.async_infer("tiny_batched", [request]))
    results = [p.get_result().as_numpy("logits") for p in pending]

    after = client.get_inference_statistics("tiny_batched")["model_stats"][0]
    assert np.abs(np.concatenate(results) - onnx_logits[:4]).max() <= TOLERANCE
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] < 4


def test_a_bad_request_fails_its_whole_batch_as_in_the_onnxruntime_backend(
    server: TritonServer,
) -> None:
    """The backend runs a dynamic batch in one onnxruntime run and answers its failure to every
    request of it (onnxruntime_utils.h RETURN_IF_ORT_ERROR: INTERNAL, "onnx runtime error <code>");
    the model keeps serving."""
    good = np.zeros((1, *INPUT_SHAPE), dtype=np.float32)
    good[0, 0, 0, 0] = 3
    bad = good.copy()
    bad[0, 0, 0, 0] = 1000
    client = httpclient.InferenceServerClient(server.urls.http, concurrency=3)

    pending = []
    for images in (good, bad, good):
        request = httpclient.InferInput("input", list(images.shape), "FP32")
        request.set_data_from_numpy(images)
        pending.append(client.async_infer("fragile", [request]))

    # The queue delay (200 ms) and preferred batch (3) put the three in one execution.
    for answer in pending:
        with pytest.raises(InferenceServerException, match=r"onnx runtime error \d+: .*out of data bounds") as failed:
            answer.get_result()
        assert failed.value.status() == "500"
    request = httpclient.InferInput("input", list(good.shape), "FP32")
    request.set_data_from_numpy(good)
    assert client.infer("fragile", [request]).as_numpy("logits").shape == (1, 10)
    assert server.is_running


def test_stop_leaves_no_process(tmp_path: Path, tiny: tuple[Path, TinyClassifier]) -> None:
    add_entry(tmp_path / "repository", "tiny", tiny[0])
    http_port, grpc_port, metrics_port = find_free_ports(3)
    server = TritonServer(
        repository=tmp_path / "repository", http_port=http_port, grpc_port=grpc_port,
        metrics_port=metrics_port, log_file=tmp_path / "tritonserver.log",
    )
    with server:
        pid = server.pid
        served = server.served_repository
        assert pid is not None and served is not None
        assert sorted(live_processes_in_group(pid)) == ["triton_python_b", "tritonserver"]

    assert not server.is_running
    assert live_processes_in_group(pid) == []
    assert not served.exists()
    assert server.stop() is None  # a second stop is harmless


@pytest.mark.parametrize("extra_args", [["--model-repository=/models"], ["--model-store", "/models"]])
def test_a_second_repository_in_extra_args_is_refused(tmp_path: Path, extra_args: list[str]) -> None:
    with pytest.raises(ServerError, match="give the model repository as repository=, not in extra_args"):
        TritonServer(repository=tmp_path, extra_args=extra_args)


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        grpc_port, metrics_port = find_free_ports(2)
        server = TritonServer(repository=tmp_path, http_port=port, grpc_port=grpc_port,
                              metrics_port=metrics_port)

        with pytest.raises(ServerError, match=f"http port {port} on 127.0.0.1 is already in use"):
            server.start()
    assert not server.is_running


def truncate_the_model(entry: Path) -> None:
    (entry / "1" / "model.onnx").write_bytes(b"truncated")


def make_it_openvino_with_a_bad_parameter(entry: Path) -> None:
    convert_to_openvino_entry(entry, parameters={"NUM_STREAMS": "lots"})


def test_a_python_model_that_fails_to_load_reports_why(tmp_path: Path, tiny: tuple[Path, TinyClassifier]) -> None:
    """A python-backend model's own code decides whether it loads: the contract cannot tell first."""
    repository = tmp_path / "repository"
    add_entry(repository, "broken", tiny[0], target=PYTHON_ONNXRUNTIME)
    truncate_the_model(repository / "broken")
    http_port, grpc_port, metrics_port = find_free_ports(3)

    with pytest.raises(ServerError, match=r"tritonserver exited with code 1: .*broken.*model.onnx.*log: "):
        with TritonServer(repository=repository, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_file=tmp_path / "tritonserver.log"):
            pass


@pytest.mark.parametrize(
    ("break_entry", "reason"),
    [
        (truncate_the_model, r"version 1: model.onnx is not a readable ONNX model .* \[onnxruntime.model-file\]"),
        # The official OpenVINO backend's check and words for a bad value.
        (make_it_openvino_with_a_bad_parameter,
         r"expected the parameter 'NUM_STREAMS' to be either AUTO/NUMA/<int_value>, got lots \[openvino.parameters\]"),
    ],
    ids=["onnxruntime-truncated", "openvino-bad-parameter"],
)
def test_an_entry_the_official_backend_would_not_load_is_skipped_with_why_and_the_rest_served(
    tmp_path: Path, tiny: tuple[Path, TinyClassifier], break_entry, reason: str
) -> None:
    repository = tmp_path / "repository"
    add_entry(repository, "broken", tiny[0])
    add_entry(repository, "tiny", tiny[0])
    break_entry(repository / "broken")
    http_port, grpc_port, metrics_port = find_free_ports(3)

    with TritonServer(repository=repository, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_file=tmp_path / "tritonserver.log") as server:
        assert server.ready_versions() == {"tiny": (1,)}
        ((name, why),) = [(entry.name, entry.reason) for entry in server.skipped]
    assert name == "broken" and re.fullmatch(reason, why), why


def test_explicit_mode_loads_the_named_models_less_the_skipped_ones(
    tmp_path: Path, tiny: tuple[Path, TinyClassifier]
) -> None:
    repository = tmp_path / "repository"
    add_entry(repository, "tiny", tiny[0])
    add_entry(repository, "not-loaded", tiny[0])
    (repository / "trt").mkdir()
    (repository / "trt" / "config.pbtxt").write_text('name: "trt" platform: "tensorrt_plan"\n')
    http_port, grpc_port, metrics_port = find_free_ports(3)

    with TritonServer(repository=repository, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, log_file=tmp_path / "tritonserver.log",
                      model_control="explicit", load_models=["tiny", "trt"]) as server:
        assert [entry.name for entry in server.skipped] == ["trt"]
        assert server.ready_versions() == {"tiny": (1,)}


def test_the_admin_key_stays_out_of_the_server_and_its_models_environment(
    tmp_path: Path, tiny: tuple[Path, TinyClassifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI reads the key from RESNET_SERVE_ADMIN_KEY; tritonserver gets it on its command
    line only, never in the environment that every python-backend model's code can read."""
    key = "environment-admin-key-0123456789"
    monkeypatch.setenv(ADMIN_KEY_VARIABLE, key)
    add_entry(tmp_path / "repository", "tiny", tiny[0])
    http_port, grpc_port, metrics_port = find_free_ports(3)
    with TritonServer(repository=tmp_path / "repository", http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, admin_key=key) as server:
        processes = live_processes_in_group(server.pid)
        assert sorted(processes) == ["triton_python_b", "tritonserver"]
        for pid in [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]:
            try:
                if os.getpgid(pid) != server.pid:
                    continue
                environment = Path(f"/proc/{pid}/environ").read_bytes()
            except (ProcessLookupError, FileNotFoundError):
                continue
            assert key.encode() not in environment and ADMIN_KEY_VARIABLE.encode() not in environment


def test_a_killed_runs_leftovers_are_removed_by_the_next_start_and_a_run_leaves_nothing(
    tmp_path: Path, tiny: tuple[Path, TinyClassifier]
) -> None:
    add_entry(tmp_path / "repository", "tiny", tiny[0])
    # What `serve` killed with SIGKILL leaves: its run folder, its served copy and log inside.
    left = runtime_folder() / f"serve-{dead_pid()}-k1ll3d"
    (left / "repository-1" / "tiny").mkdir(parents=True)
    (left / "tritonserver.log").write_text("the log of a run that was killed\n")
    http_port, grpc_port, metrics_port = find_free_ports(3)
    server = TritonServer(repository=tmp_path / "repository", http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port)
    with server:
        assert not left.exists()
        # Without a log file of its own the server keeps its log in its run folder.
        assert server.log_file is not None and server.log_file.parent.parent == runtime_folder()
        run = server.log_file.parent
        assert run.stat().st_mode & 0o077 == 0
    assert not run.exists()
