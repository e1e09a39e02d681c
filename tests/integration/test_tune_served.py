"""Short `resnet-serve tune` runs on the real embedded tritonserver: the session's trained
ResNet-20 exported with a slow batcher as the baseline, onnxruntime and OpenVINO INT8
candidates measured by the bench engine, the winner written as version 2 and served; and the
tiny classifier tuned with its image pipeline, measured with JPEG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.inference import InferenceClient
from resnet_serve.runtimes import OnnxRuntime
from resnet_serve.triton.config import VersionPolicy
from resnet_serve.triton.images import find_image
from resnet_serve.triton.repository import check_repository, read_model_entry, write_image_pipeline
from resnet_serve.triton.server import TritonServer, find_free_ports

pytestmark = pytest.mark.triton
runner = CliRunner()
# Short windows and a loose stability rule: this checks what tune does, not how steady 2 shared
# cores are.
QUICK = ["--measurement-interval", "300", "-s", "1000", "-r", "3", "--warmup", "0.3"]


def test_a_short_tune_measures_every_candidate_and_writes_the_winner_as_a_served_version(
    trained_resnet20: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    # A baseline the search must beat: a dynamic batcher that waits 20 ms for requests that never
    # come (2 in flight cannot fill a batch of 64). Its image pipeline batches up to 64 too.
    exported = runner.invoke(app, ["export", str(trained_resnet20), "--repository", str(repository), "--name", "r20",
                                   "--verify-images", "64", "--max-queue-delay-us", "20000"])
    assert exported.exit_code == 0, exported.output
    version_1 = (repository / "r20" / "1" / "model.onnx").read_bytes()

    # OpenVINO pads every execution to max batch 3: above the 2 images in flight, so no execution is
    # full (a full one after a padded one fails in the official backend: docs/backend-contract.md),
    # and below twice them, which tune leaves out as mostly padding.
    result = runner.invoke(app, [
        "tune", "r20", "--repository", str(repository), "--p99-ms", "1000", "--concurrency", "2",
        "--runtimes", "onnxruntime,openvino-int8", "--max-batch-sizes", "3", "--preferred-batch-sizes", "0",
        "--queue-delays-us", "100", "--instances", "1", "--threads", "1",
        "--verify-images", "128", "--calibration-images", "128", "--min-agreement", "0.95",
        "-o", str(tmp_path / "out"), *QUICK,
    ])

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "Pareto front of r20: concurrency 2, batch 1, p99 ≤ 1000 ms" in output
    assert "openvino-int8: computes in int8 where quantized" in output
    report = json.loads((tmp_path / "out" / "tune.json").read_text())
    measurements = {m["label"]: m for m in report["measurements"]}
    assert list(measurements) == ["current", "c01", "c02"]
    assert [(m["candidate"]["runtime"], m["candidate"]["threads"]) for m in measurements.values()] == [
        ("onnxruntime", None), ("onnxruntime", 1), ("openvino-int8", 1)]
    for measured in measurements.values():
        row = measured["result"]
        assert measured["status"] == "measured", measured["reason"]
        assert row["inferences_per_second"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["server_compute_infer_us"] > 0 and row["windows"] == 3
    int8 = next(check for check in report["runtimes"] if check["runtime"] == "openvino-int8")
    assert int8["refused"] is None and int8["parity"]["top1_agreement"] >= 0.95
    assert int8["computes_in"].startswith("int8 where quantized")
    assert report["chosen"] in report["pareto"]
    chosen = measurements[report["chosen"]]
    points = [(m["result"]["inferences_per_second"], m["result"]["p99_ms"]) for m in measurements.values()]
    assert chosen["result"]["inferences_per_second"] == max(x for x, p99 in points if p99 <= 1000)
    assert report["speedup"] == pytest.approx(
        chosen["result"]["inferences_per_second"] / measurements["current"]["result"]["inferences_per_second"])
    with Image.open(tmp_path / "out" / "pareto.png") as plot:
        assert plot.format == "PNG" and plot.width > 400

    assert measurements["current"]["result"]["p50_ms"] >= 20
    assert report["chosen"] != "current" and report["speedup"] > 1
    entry = read_model_entry(repository=repository, name="r20")
    candidate = chosen["candidate"]
    assert report["written_version"] == 2 and entry.versions == (1, 2)
    assert f"wrote {report['chosen']} ({candidate['runtime']}, max batch 3" in output and "as version 2 of r20" in output
    assert (repository / "r20" / "1" / "model.onnx").read_bytes() == version_1
    # What holds whichever runtime wins (which one does depends on the CPU's instructions:
    # OpenVINO's INT8 kernels gain more over onnxruntime FP32 with AVX-512 VNNI than with AVX2).
    config = entry.config
    openvino = candidate["runtime"] == "openvino-int8"
    assert config.version_policy == VersionPolicy(kind="latest", num_versions=1)
    assert config.backend == ("openvino" if openvino else "onnxruntime")
    # The kind stays the entry's own (export's KIND_AUTO), but OpenVINO runs on the CPU only; a
    # batch limit above 1 makes OpenVINO pad every execution, as its backend needs.
    assert (config.max_batch_size, config.instance_groups[0].count, config.instance_groups[0].kind) == (
        3, 1, "KIND_CPU" if openvino else "KIND_AUTO")
    assert config.parameters.get("ENABLE_BATCH_PADDING") == ("YES" if openvino else None)
    # The image pipeline follows the new batch limit, so the ensemble stays loadable.
    assert [read_model_entry(repository=repository, name=n).config.max_batch_size
            for n in ("r20-preprocess", "r20-image")] == [3, 3]
    assert [str(p) for p in check_repository(repository=repository, image=find_image("deploy"))
            if p.severity == "error"] == []
    tuning = json.loads(config.parameters["tuning"])
    assert tuning["replaced"]["version"] == 1 and tuning["concurrency"] == 2
    assert tuning["measured_on"].startswith("CPU, through the embedded Triton server")
    assert tuning["replaced"]["settings"]["max_queue_delay_us"] == 20000
    assert tuning["inferences_per_second"] == round(chosen["result"]["inferences_per_second"], 2)

    images = fashion_mnist(24)
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      log_file=tmp_path / "triton.log") as server:
        assert server.ready_versions() == {"r20": (2,), "r20-image": (1,), "r20-preprocess": (1,)}
        with InferenceClient(model="r20", protocol="grpc", url=server.urls.grpc) as client:
            # Requests of 2, which an OpenVINO winner pads to 3: a full batch after a padded one (its
            # warm-up's) fails in the official backend, whose pad size is never reset.
            served = np.concatenate([client.infer(images[i:i + 2]) for i in range(0, len(images), 2)])
    expected = OnnxRuntime(repository / "r20" / "1" / "model.onnx").run(images)
    assert (served.argmax(1) == expected.argmax(1)).mean() >= 0.9
    assert np.isfinite(served).all()


def test_when_nothing_settles_tune_says_so_rather_than_blaming_the_budget(tmp_path: Path) -> None:
    export_tiny_classifier(tmp_path / "tiny.onnx")
    write_entry(repository=tmp_path / "repo", name="tiny", model_file=tmp_path / "tiny.onnx",
                      class_names=CLASS_NAMES, preprocessing=PREPROCESSING)

    # Three 100 ms windows that must agree within 0.001%: nothing can settle.
    result = runner.invoke(app, [
        "tune", "tiny", "--repository", str(tmp_path / "repo"), "--p99-ms", "1000", "--runtimes", "onnxruntime",
        "--max-batch-sizes", "64", "--preferred-batch-sizes", "0", "--queue-delays-us", "100", "--instances", "1",
        "--threads", "1", "--measurement-interval", "100", "-s", "0.001", "-r", "3", "--warmup", "0", "--no-write",
        "-o", str(tmp_path / "out"),
    ])

    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in output
    assert "no configuration could be measured: 2 unstable (each with why, above); nothing written" in output
    assert "no configuration met p99" not in output


def test_tune_with_image_files_searches_the_pipeline_and_writes_its_three_entries_consistently(
    tmp_path: Path,
) -> None:
    from skimage import data

    export_tiny_classifier(tmp_path / "tiny.onnx")
    repository = tmp_path / "repo"
    write_entry(repository=repository, name="tiny", model_file=tmp_path / "tiny.onnx", warmup_images=fashion_mnist(1))
    # A baseline the search must beat: a -preprocess step that waits 20 ms for files that never come.
    write_image_pipeline(repository=repository, classifier="tiny", max_queue_delay_us=20000)
    files = tmp_path / "files"
    files.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).resize((96, 72)).save(files / f"{name}.jpg", quality=90)

    result = runner.invoke(app, [
        "tune", "tiny", "--repository", str(repository), "--images", str(files), "--concurrency", "2",
        "--batch-size", "2", "--runtimes", "onnxruntime", "--max-batch-sizes", "8", "--preferred-batch-sizes", "0",
        "--queue-delays-us", "100", "--instances", "1", "--threads", "1", "--preprocess-instances", "1",
        "--preprocess-max-batch-sizes", "2,4", "--preprocess-queue-delays-us", "100", "-o", str(tmp_path / "out"),
        *QUICK,
    ])

    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"image files from {files}" in output and "preprocess" in output
    report = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert report["options"]["images"] == str(files)
    measurements = {m["label"]: m for m in report["measurements"]}
    step_settings = ("preprocess_instances", "preprocess_max_batch_size", "preprocess_max_queue_delay_us")
    assert [tuple(m["candidate"][key] for key in step_settings) for m in measurements.values()] == [
        (1, 64, 20000), (1, 2, 100), (1, 4, 100)]
    for measured in measurements.values():
        assert measured["status"] == "measured", measured["reason"]
        row = measured["result"]
        # Measured with the files through the ensemble: Triton's statistics of both its steps, each having
        # run the ensemble's requests in batches of one or more.
        assert [step["model"] for step in row["steps"]] == ["tiny-preprocess", "tiny"]
        assert all(step["requests"] >= step["executions"] > 0 and step["compute_infer_us"] > 0
                   for step in row["steps"]), row["steps"]
    chosen = measurements[report["chosen"]]
    assert report["chosen"] != "current" and report["written_version"] == 2
    assert measurements["current"]["result"]["p50_ms"] >= 20 > chosen["result"]["p50_ms"]

    entries = {name: read_model_entry(repository=repository, name=name).config
               for name in ("tiny", "tiny-preprocess", "tiny-image")}
    step = entries["tiny-preprocess"]
    assert (entries["tiny"].max_batch_size, step.max_batch_size, step.instance_groups[0].count,
            step.dynamic_batching.max_queue_delay_microseconds) == (8, *(chosen["candidate"][key] for key in (
                "preprocess_max_batch_size", "preprocess_instances", "preprocess_max_queue_delay_us")))
    # The ensemble takes what both its steps take, and nothing that core or the official images refuse.
    assert entries["tiny-image"].max_batch_size == min(8, step.max_batch_size)
    assert [str(p) for p in check_repository(repository=repository, image=find_image("deploy"))
            if p.severity == "error"] == []
    assert json.loads(entries["tiny"].parameters["tuning"])["images"] == str(files)
