"""The embedded tritonserver serving a repository written for the official container.

One trained ResNet-20 (real Fashion-MNIST) is written as:
  resnet20            target onnxruntime (platform onnxruntime_onnx), versions 1 and 2
  resnet20-openvino   backend openvino, OpenVINO IR (model.xml + model.bin)
  resnet20-python     target python-onnxruntime (mirrored as it is)
  resnet20-tensorrt   a TensorRT plan, which this server cannot run (skipped)
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from openvino.preprocess import PrePostProcessor
from tiny_onnx import write_entry

from resnet_serve.checkpoints import Checkpoint, load_checkpoint
from resnet_serve.datasets import load_dataset
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.triton.config import parse_model_config
from resnet_serve.triton.proxy import SkippedEntry
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import ONNXRUNTIME, OPENVINO, PYTHON_ONNXRUNTIME, TENSORRT_PLAN

pytestmark = pytest.mark.triton

IMAGES = 256
# Settings the official OpenVINO backend reads; the in-process reference compiles with the same.
OPENVINO_PARAMETERS = {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1"}
TENSORRT_REASON = (
    "a TensorRT plan needs Triton's tensorrt backend and the GPU it was built for; the embedded "
    "server has neither (serve it in the official container)"
)


def tree_digest(folder: Path) -> dict[str, str]:
    """Every path under `folder` with its content's hash (links and folders by what they are)."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            digest[key] = f"link to {os.readlink(path)}"
        elif path.is_dir():
            digest[key] = "folder"
        else:
            digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def add_entry(repository: Path, name: str, model_file: Path, checkpoint: Checkpoint, **options: object) -> Path:
    meta = checkpoint.meta
    write_entry(
        repository=repository, name=name, model_file=model_file, class_names=meta.class_names,
        preprocessing=meta.preprocessing,
        **options,  # type: ignore[arg-type]
    )
    return repository / name


def set_openvino_parameters(config) -> None:
    for key, value in OPENVINO_PARAMETERS.items():
        config.parameters[key].string_value = value


def edit_config(entry: Path, edit) -> None:
    config = parse_model_config((entry / "config.pbtxt").read_text())
    edit(config)
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))


def export_folded(model: torch.nn.Module, path: Path, checkpoint: Checkpoint) -> Path:
    export_onnx(fold_batchnorm(model).model, path, input_shape=checkpoint.meta.preprocessing.input_shape)
    return path


@pytest.fixture(scope="module")
def checkpoint(trained_resnet20: Path) -> Checkpoint:
    return load_checkpoint(trained_resnet20)


@pytest.fixture(scope="module")
def onnx_versions(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Version 1: the trained model; version 2: the same with its classifier's bias moved."""
    folder = tmp_path_factory.mktemp("onnx")
    first = export_folded(checkpoint.model, folder / "v1.onnx", checkpoint)
    changed = load_checkpoint(checkpoint.path).model
    with torch.no_grad():
        changed.fc.bias += torch.linspace(-1.0, 1.0, changed.fc.bias.numel())
    return first, export_folded(changed, folder / "v2.onnx", checkpoint)


@pytest.fixture(scope="module")
def repository(
    checkpoint: Checkpoint, onnx_versions: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    first, second = onnx_versions
    entry = add_entry(repository, "resnet20", first, checkpoint, target=ONNXRUNTIME)
    (entry / "2").mkdir()
    (entry / "2" / "model.onnx").write_bytes(second.read_bytes())
    edit_config(entry, lambda config: config.version_policy.all.SetInParent())
    openvino_entry = add_entry(repository, "resnet20-openvino", first, checkpoint, target=OPENVINO)
    edit_config(openvino_entry, set_openvino_parameters)
    add_entry(repository, "resnet20-python", first, checkpoint, target=PYTHON_ONNXRUNTIME)
    plan = tmp_path_factory.mktemp("plan") / "model.plan"
    plan.write_bytes(b"not an engine: the server skips the entry before anything reads it")
    plan.with_name("model.plan.json").write_text("{}")
    add_entry(repository, "resnet20-tensorrt", plan, checkpoint, target=TENSORRT_PLAN)
    return repository


@pytest.fixture(scope="module")
def digest_before(repository: Path) -> dict[str, str]:
    return tree_digest(repository)


@pytest.fixture(scope="module")
def server(repository: Path, digest_before: dict[str, str]) -> Iterator[TritonServer]:
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      log_file=repository.parent / "tritonserver.log") as running:
        yield running


@pytest.fixture(scope="module")
def images(checkpoint: Checkpoint) -> np.ndarray:
    return checkpoint.meta.preprocessing.normalize(load_dataset(None, split="test").to_memory(range(IMAGES)).images)


def served_logits(server: TritonServer, model: str, images: np.ndarray, *, version: str = "") -> np.ndarray:
    """The server's logits for `images`, sent over gRPC in requests of the model's max_batch_size."""
    client = grpcclient.InferenceServerClient(server.urls.grpc)
    size = client.get_model_config(model).config.max_batch_size
    answers = []
    for start in range(0, len(images), size):
        request = grpcclient.InferInput("input", [len(images[start:start + size]), *images.shape[1:]], "FP32")
        request.set_data_from_numpy(images[start:start + size])
        answers.append(client.infer(model, [request], model_version=version).as_numpy("logits"))
    return np.concatenate(answers)


def in_chunks(run, images: np.ndarray, size: int = 64) -> np.ndarray:
    return np.concatenate([run(images[start:start + size]) for start in range(0, len(images), size)])


def test_each_entry_is_served_or_skipped_with_its_reason(server: TritonServer) -> None:
    assert [(e.name, e.served_as, e.runtime, e.versions) for e in server.served] == [
        ("resnet20", "proxy", "onnxruntime", (1, 2)),
        ("resnet20-openvino", "proxy", "openvino", (1,)),
        ("resnet20-python", "mirror", "python", (1,)),
    ]
    assert server.skipped == (SkippedEntry("resnet20-tensorrt", TENSORRT_REASON, kind="not runnable"),)
    assert server.ready_versions() == {"resnet20": (1, 2), "resnet20-openvino": (1,), "resnet20-python": (1,)}


def test_the_onnxruntime_entry_answers_like_onnxruntime_in_process(
    server: TritonServer, onnx_versions: tuple[Path, Path], images: np.ndarray
) -> None:
    session = ort.InferenceSession(str(onnx_versions[0]), providers=["CPUExecutionProvider"])
    expected = in_chunks(lambda batch: session.run(["logits"], {"input": batch})[0], images)

    logits = served_logits(server, "resnet20", images, version="1")

    assert np.abs(logits - expected).max() <= 1e-5


def test_the_openvino_entry_answers_like_openvino_in_process(
    server: TritonServer, repository: Path, images: np.ndarray
) -> None:
    # Compiled with the entry's settings and nothing else, its batch fixed to the entry's
    # max_batch_size (1), as the official backend compiles it: on a CPU with BF16 instructions
    # both compute in BF16.
    core = openvino.Core()
    model = core.read_model(str(repository / "resnet20-openvino" / "1" / "model.onnx"))
    processor = PrePostProcessor(model)
    processor.input("input").tensor().set_layout(openvino.Layout("N..."))
    model = processor.build()
    openvino.set_batch(model, 1)
    request = core.compile_model(model, "CPU", dict(OPENVINO_PARAMETERS)).create_infer_request()
    # One image per request (max_batch_size 1): the first 64 images are enough.
    expected = in_chunks(lambda batch: request.infer({"input": batch})["logits"].copy(), images[:64], size=1)

    logits = served_logits(server, "resnet20-openvino", images[:64])

    assert np.abs(logits - expected).max() <= 1e-5
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_every_version_answers_from_its_own_file(
    server: TritonServer, onnx_versions: tuple[Path, Path], images: np.ndarray
) -> None:
    few = images[:16]
    expected = [ort.InferenceSession(str(path)).run(["logits"], {"input": few})[0] for path in onnx_versions]

    answers = [served_logits(server, "resnet20", few, version=version) for version in ("1", "2")]

    for logits, reference in zip(answers, expected, strict=True):
        assert np.abs(logits - reference).max() <= 1e-5
    assert np.abs(answers[0] - answers[1]).max() >= 0.5


def test_statistics_and_metrics_carry_the_entries_own_names(server: TritonServer, images: np.ndarray) -> None:
    for model in ("resnet20", "resnet20-openvino"):
        served_logits(server, model, images[:64])
    client = httpclient.InferenceServerClient(server.urls.http)

    for model in ("resnet20", "resnet20-openvino"):
        stats = client.get_inference_statistics(model)["model_stats"]
        assert {s["name"] for s in stats} == {model}
        assert sum(s["inference_count"] for s in stats) >= 64
    metrics = urllib.request.urlopen(f"http://{server.urls.metrics}/metrics", timeout=10).read().decode()
    for model in ("resnet20", "resnet20-openvino"):
        success = re.search(rf'^nv_inference_request_success{{model="{model}",version="1"}} (\d+)$', metrics, re.M)
        assert success and int(success.group(1)) >= 1, model
    assert 'model="resnet20-tensorrt"' not in metrics


def test_the_repository_is_left_as_it_was(
    server: TritonServer, repository: Path, digest_before: dict[str, str], images: np.ndarray
) -> None:
    # After every entry has loaded and answered: the python backend compiles model.py files
    # (__pycache__), and none of that may land in the user's repository.
    for model in ("resnet20", "resnet20-openvino", "resnet20-python"):
        served_logits(server, model, images[:1])

    assert tree_digest(repository) == digest_before
    served = server.served_repository
    assert served is not None and served.stat().st_mode & 0o077 == 0
    assert any(served.rglob("__pycache__"))


def test_the_serve_command_lists_served_and_skipped_entries_and_cleans_up(
    repository: Path, digest_before: dict[str, str], tmp_path: Path
) -> None:
    http, grpc, metrics = find_free_ports(3)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "resnet_serve.cli", "serve", "--repository", str(repository),
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--log-file", str(tmp_path / "triton.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(temporary), "COLUMNS": "200"},
    )
    try:
        lines = []
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if "Press Ctrl-C" in line:
                break
        assert list(temporary.glob("resnet-serve-*/serve-*/repository-1")), "the served copy lives in TMPDIR"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()  # type: ignore[union-attr]

    assert f"skipped resnet20-tensorrt: {TENSORRT_REASON}" in lines
    assert "✓ Triton is ready with resnet20, resnet20-openvino, resnet20-python" in lines
    assert "  resnet20: onnxruntime (python-backend proxy), versions 1, 2" in lines
    assert "  resnet20-openvino: openvino (python-backend proxy), version 1" in lines
    assert "  resnet20-python: python, version 1" in lines
    assert f"  gRPC    localhost:{grpc}" in lines
    assert list(temporary.glob("resnet-serve-*/serve-*")) == []
    assert tree_digest(repository) == digest_before
