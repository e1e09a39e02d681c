"""One freshly trained ResNet-20 through the whole chain: train → export (CLI) → the real
embedded tritonserver → classify / evaluate / bench (CLI) over HTTP and gRPC, checked against
the PyTorch checkpoint."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from processes import start_interruptible
from typer.testing import CliRunner

from resnet_serve.checkpoints import load_checkpoint
from resnet_serve.cli import app
from resnet_serve.client.connection import ConnectionOptions
from resnet_serve.client.inference import InferenceClient
from resnet_serve.client.results import PERF_ANALYZER_COLUMNS
from resnet_serve.datasets import load_default_dataset
from resnet_serve.runtimes import TorchRuntime
from resnet_serve.triton.server import TritonServer, find_free_ports

pytestmark = pytest.mark.triton
runner = CliRunner()
MODEL = "r20"


@pytest.fixture(scope="module")
def test_set():
    return load_default_dataset(split="test")


@pytest.fixture(scope="module")
def repository(trained_resnet20: Path, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    report = tmp_path_factory.mktemp("reports") / "export.json"
    result = runner.invoke(
        app, ["export", str(trained_resnet20), "--repository", str(repository), "--name", MODEL, "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    exported = json.loads(report.read_text())
    assert exported["onnx"]["batchnorm_nodes"] == 0 and exported["folding"]["folded"] == 19
    assert exported["fold_parity"]["max_abs_relative"] <= 1e-4 and exported["onnx_parity"]["max_abs_relative"] <= 1e-4
    assert exported["onnx_parity"]["top1_agreement"] == 1.0
    return repository


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory):
    http, grpc, metrics = find_free_ports(3)
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=log) as running:
        yield running


def url(server: TritonServer, protocol: str) -> str:
    return getattr(server.urls, protocol)


@pytest.fixture(scope="module")
def pytorch(trained_resnet20: Path):
    return load_checkpoint(trained_resnet20)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_logits_equal_pytorch(server, pytorch, test_set, protocol):
    images = pytorch.meta.preprocessing.normalize(test_set.images[:16])
    expected = TorchRuntime(pytorch.model).run(images)
    with InferenceClient(protocol=protocol, url=url(server, protocol)) as client:
        assert client.model.name == MODEL
        assert client.model.preprocessing == pytorch.meta.preprocessing
        assert client.model.class_names == pytorch.meta.class_names
        for batch in (images[:1], images):
            served = client.infer(batch)
            assert np.abs(served - expected[: len(batch)]).max() <= 1e-4


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classify_image_files(server, pytorch, test_set, protocol, tmp_path):
    paths = []
    for index in range(4):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(test_set.images[index]).save(paths[-1])
    jpeg = tmp_path / "rgb.jpg"  # a colour JPEG of another size: converted as the model expects
    Image.fromarray(np.repeat(np.kron(test_set.images[4], np.ones((2, 2), np.uint8))[..., None], 3, axis=2)).save(jpeg, quality=95)
    paths.append(jpeg)
    report = tmp_path / "classify.json"
    result = runner.invoke(
        app, ["classify", *map(str, paths), "--protocol", protocol, "--url", url(server, protocol), "-k", "3", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    answers = json.loads(report.read_text())["images"]
    expected = TorchRuntime(pytorch.model).run(pytorch.meta.preprocessing.normalize(test_set.images[:4])).argmax(1)
    names = pytorch.meta.class_names
    for answer, index in zip(answers, expected, strict=False):
        assert answer["predictions"][0]["label"] == names[index]
        probabilities = [p["probability"] for p in answer["predictions"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
    assert names[expected[0]] in result.output


def test_classify_refuses_a_corrupt_image(server, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = runner.invoke(app, ["classify", str(good), str(bad), "--url", url(server, "http")])
    assert result.exit_code != 0
    assert "bad.jpg" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_model_names_the_ready_ones(server):
    result = runner.invoke(app, ["bench", "--model", "nope", "--url", url(server, "grpc")])
    assert result.exit_code != 0 and "nope" in result.output and MODEL in result.output


def test_evaluate_matches_pytorch_on_the_test_images(server, trained_resnet20, pytorch, test_set, tmp_path):
    report = tmp_path / "evaluate.json"
    result = runner.invoke(
        app,
        ["evaluate", "--url", url(server, "grpc"), "--checkpoint", str(trained_resnet20), "--limit", "1000",
         "--batch-size", "50", "--concurrency", "2", "--json", str(report)],
    )
    assert result.exit_code == 0, result.output
    evaluation = json.loads(report.read_text())
    logits = TorchRuntime(pytorch.model).run(pytorch.meta.preprocessing.normalize(test_set.images[:1000]))
    expected_top1 = float((logits.argmax(1) == test_set.labels[:1000]).mean())
    assert evaluation["images"] == 1000
    assert evaluation["agreement"] == 1.0
    assert evaluation["top1"] == pytest.approx(expected_top1) == evaluation["reference_top1"]
    assert evaluation["top5"] >= evaluation["top1"]
    assert evaluation["max_abs_logit_difference"] <= 1e-4
    # Rows are the true classes, columns the served answers, which equal PyTorch's here.
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (test_set.labels[:1000], logits.argmax(1)), 1)
    assert evaluation["confusion_matrix"] == expected.tolist()
    assert evaluation["per_class_accuracy"] == pytest.approx(np.diag(expected) / expected.sum(axis=1))
    assert evaluation["class_names"] == pytorch.meta.class_names


def test_evaluate_streams_an_image_folder_of_files_of_any_size(server, trained_resnet20, pytorch, test_set, tmp_path):
    """Three Fashion-MNIST test images of each class as PNG and JPEG files of three sizes, in
    class folders named so that their sorted order is the model's class order."""
    paths, labels = [], []
    for label, name in enumerate(pytorch.meta.class_names):
        for copy, index in enumerate(np.flatnonzero(test_set.labels == label)[:3]):
            rows, columns = [(1, 1), (2, 3), (3, 2)][copy]  # 28×28, 56×84 and 84×56 pixels
            pixels = np.kron(test_set.images[index], np.ones((rows, columns), np.uint8))
            path = tmp_path / "photos" / f"{label}-{name.replace('/', '-')}" / f"{index}.{['png', 'jpg'][copy % 2]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            paths.append(path)
            labels.append(label)
    report = tmp_path / "evaluate.json"
    result = runner.invoke(
        app,
        ["evaluate", "--url", url(server, "http"), "--protocol", "http", "--data", str(tmp_path / "photos"),
         "--checkpoint", str(trained_resnet20), "--batch-size", "4", "--json", str(report)],
    )
    assert result.exit_code == 0, result.output
    evaluation = json.loads(report.read_text())
    assert evaluation["images"] == 30 and evaluation["agreement"] == 1.0
    assert evaluation["max_abs_logit_difference"] <= 1e-4
    # Each file prepared on its own, as classify prepares it, gives the same answers.
    inputs = np.stack([pytorch.meta.preprocessing.load_image(path) for path in paths])
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (labels, TorchRuntime(pytorch.model).run(inputs).argmax(1)), 1)
    assert evaluation["confusion_matrix"] == expected.tolist()
    assert evaluation["top1"] == pytest.approx(np.trace(expected) / 30)
    assert evaluation["per_class_accuracy"] == pytest.approx(np.diag(expected) / 3)


def test_bench_reports_latency_throughput_and_the_server_split(server, tmp_path):
    report, table = tmp_path / "bench.json", tmp_path / "bench.csv"
    result = runner.invoke(
        app,
        ["bench", "--url", url(server, "http"), "--protocol", "http", "--concurrency", "1,2",
         "--warmup", "0.3", "--measurement-interval", "300", "--stability-percentage", "1000", "--batch-size", "4", "--json", str(report), "--csv", str(table)],
    )
    assert result.exit_code == 0, result.output
    bench = json.loads(report.read_text())
    assert bench["batch_size"] == 4 and [r["concurrency"] for r in bench["results"]] == [1, 2]
    for row in bench["results"]:
        assert row["requests"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["inferences_per_second"] == pytest.approx(4 * row["requests_per_second"])
        assert row["server_compute_infer_us"] > 0
        # The server's own time cannot exceed what the client waited.
        server_ms = (row["server_queue_us"] + row["server_compute_input_us"] + row["server_compute_infer_us"] + row["server_compute_output_us"]) / 1000
        assert server_ms < row["mean_ms"]
    with table.open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == PERF_ANALYZER_COLUMNS and len(rows) == 3


def test_a_failed_export_replaces_nothing(repository, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in repository.rglob("*")}
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(b"")
    result = runner.invoke(app, ["export", str(wrong), "--repository", str(repository), "--name", MODEL])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert {p: p.stat().st_mtime_ns for p in repository.rglob("*")} == before


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_runs_until_a_signal_and_stops_triton(repository, stop_signal, tmp_path):
    http, grpc, metrics = find_free_ports(3)
    command = [
        sys.executable, "-m", "resnet_serve.cli", "serve", "--repository", str(repository),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--log-file", str(tmp_path / "triton.log"),
    ]
    process = start_interruptible(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert f"Triton is ready with {MODEL}" in output and f"localhost:{grpc}" in output, output
        # The restricted APIs are on by default, with a key that serve generates and prints.
        (key,) = [line.split()[-1] for line in lines if line.strip().startswith("admin key")]
        # The model is found without the key (from the open statistics endpoint), and with it.
        for connection in (None, ConnectionOptions(admin_key=key)):
            with InferenceClient(protocol="grpc", url=f"localhost:{grpc}", connection=connection) as client:
                assert client.model.name == MODEL
        triton_pids = _children(process.pid)
        assert triton_pids, "tritonserver should run as a child of the CLI"
        process.send_signal(stop_signal)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for pid in triton_pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []
