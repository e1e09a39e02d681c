"""`resnet-serve verify`: two runtimes of a checkpoint on real test images, made and chosen as
`export` makes and chooses them."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
from samples import fashion_mnist, fashion_resnet20
from typer.testing import CliRunner

from resnet_serve.artifacts import Artifacts
from resnet_serve.checkpoints import load_checkpoint, save_checkpoint
from resnet_serve.cli import app
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.runtimes import RUNTIMES, OnnxRuntime, OpenVinoRuntime, TorchRuntime, _signal_stack, run_batched

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, meta = fashion_resnet20(seed=3)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "r20.safetensors", model=model, meta=meta)


def test_verify_runs_the_very_int8_file_that_export_serves(trained_resnet20: Path, tmp_path: Path) -> None:
    selection = ["--calibration-images", "64", "--calibration-method", "percentile"]
    exported = runner.invoke(app, [
        "export", str(trained_resnet20), "--repository", str(tmp_path / "repo"), "--name", "m",
        "--precision", "int8", "--verify-images", "64", "--min-agreement", "0.9", *selection,
    ])
    assert exported.exit_code == 0, exported.output
    verified = runner.invoke(app, [
        "verify", str(trained_resnet20), "--reference", "onnx-fp32", "--candidate", "onnx-int8",
        "--images", "64", "--batch-sizes", "1,64", "--keep-artifacts", str(tmp_path / "kept"),
        "--json", str(tmp_path / "verify.json"), *selection,
    ])
    assert verified.exit_code == 0, verified.output

    served = (tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes()
    assert (tmp_path / "kept" / "model-int8.onnx").read_bytes() == served
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["notes"]["model-int8.onnx"].startswith("static QDQ, per-channel weights, percentile calibration on 64")
    assert f"files kept in {tmp_path / 'kept'}" in " ".join(verified.output.split())  # rich wraps long lines


def test_verify_fails_with_one_line_when_a_threshold_is_missed(checkpoint: Path) -> None:
    result = runner.invoke(app, [
        "verify", str(checkpoint), "--candidate", "onnx-fp32", "--images", "16", "--batch-sizes", "8",
        "--rtol", "1e-12",
    ])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "of the largest logit" in lines[0] and "tolerance rtol 1e-12" in lines[0], result.output


def test_verify_offers_exactly_the_registered_runtimes(checkpoint: Path) -> None:
    result = runner.invoke(app, ["verify", str(checkpoint), "--candidate", "tensorrt"])
    assert result.exit_code == 2
    shown = " ".join(result.output.replace("│", " ").split())  # Typer's usage error, in a wrapping box
    assert "'tensorrt' is not one of 'torch', 'torch-folded', 'onnx-fp32', 'onnx-int8'" in shown


# ---- OpenVINO. These tests stay after every test that trains (this file sorts after
# test_train.py, and trains its own fixture first): with OpenVINO loaded first, PyTorch training
# in the same process crashed in its OpenMP runtime (libgomp's team barrier).


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return fashion_mnist(52)


@pytest.fixture(scope="module")
def onnx_path(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    loaded = load_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("verify") / "resnet20.onnx"
    return export_onnx(fold_batchnorm(loaded.model).model, path, input_shape=(1, 28, 28)).path


def test_verify_passes_within_thresholds_and_writes_json(checkpoint: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "verify.json"
    result = runner.invoke(app, [
        "verify", str(checkpoint), "--reference", "torch", "--candidate", "openvino-fp32",
        "--images", "40", "--batch-sizes", "1,16", "--rtol", "1e-4", "--min-agreement", "1",
        "--max-accuracy-drop", "0", "--json", str(report_path),
    ])
    assert result.exit_code == 0, result.output
    assert "openvino-fp32 vs torch on 40 test images" in result.output
    report = json.loads(report_path.read_text())
    parity = report["parity"]
    assert parity["top1_agreement"] == 1.0 and parity["reference_top1"] == parity["candidate_top1"]
    assert 0 < parity["max_abs_relative"] <= 1e-4
    assert [p["batch_size"] for p in parity["per_batch"]] == [1, 16]
    assert report["selection"] == {"data_dir": None, "verify_images": 40, "calibration_images": 512, "calibration_seed": 0}
    assert report["checkpoint"] == str(checkpoint) and report["artifacts"] is None


def test_openvino_fp32_matches_onnxruntime_and_bf16_agrees(onnx_path: Path, images: np.ndarray) -> None:
    expected = OnnxRuntime(onnx_path).run(images)
    fp32 = OpenVinoRuntime(onnx_path, precision="fp32", threads=1)
    assert (fp32.name, fp32.inference_precision, fp32.note) == ("openvino-fp32", "f32", None)
    assert np.abs(run_batched(fp32, images, 8) - expected).max() <= 1e-4
    bf16 = OpenVinoRuntime(onnx_path, precision="bf16", threads=1)
    assert bf16.inference_precision in ("bf16", "f32")  # f32 where the CPU has no BF16
    assert bf16.note == (None if bf16.inference_precision == "bf16" else "OpenVINO computes in f32 on this CPU")
    assert (bf16.run(images).argmax(1) == expected.argmax(1)).mean() >= 0.97


def test_openvino_without_a_hint_computes_in_the_cpus_default_as_tritons_backend_does(
    onnx_path: Path, images: np.ndarray
) -> None:
    import openvino

    default = OpenVinoRuntime(onnx_path, precision=None, threads=1)
    cpu_default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    bf16_capable = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert (default.name, default.note) == ("openvino-default", None)
    assert default.inference_precision == cpu_default == ("bf16" if bf16_capable else "f32")
    expected = OnnxRuntime(onnx_path).run(images)
    assert (default.run(images).argmax(1) == expected.argmax(1)).mean() >= 0.97


def test_openvino_runtimes_leave_the_threads_signal_stack_as_it_was(onnx_path: Path, images: np.ndarray) -> None:
    # OpenVINO's CPU plugin swaps in an alternate signal stack of its own while a compiled model
    # lives and puts back the one it found when it goes. Two runtimes freed in the order they
    # were built left the thread on the first one's unmapped stack, where Python's handlers
    # run: the next SIGCHLD or SIGINT killed the process (the test suite, after verify).
    def signal_stack() -> tuple[int | None, int, int]:
        current = _signal_stack()
        assert current is not None
        return current.ss_sp, current.ss_flags, current.ss_size

    before = signal_stack()
    first, second = (OpenVinoRuntime(onnx_path, threads=1) for _ in range(2))
    assert signal_stack() == before
    assert first.run(images[:2]).shape == second.run(images[:2]).shape == (2, 10)
    del first
    gc.collect()
    del second
    gc.collect()
    assert signal_stack() == before


def test_every_registered_kind_builds_from_a_checkpoints_files_and_runs(
    checkpoint: Path, images: np.ndarray, tmp_path: Path
) -> None:
    loaded = load_checkpoint(checkpoint)
    artifacts = Artifacts(loaded, workdir=tmp_path, calibration=lambda: images[:32])
    reference = TorchRuntime(loaded.model).run(images[:8])

    for name, kind in RUNTIMES.items():
        runtime = kind.build(artifacts, threads=1)
        assert runtime.name == name and kind.help
        logits = runtime.run(images[:8])
        assert logits.shape == (8, 10) and logits.dtype == np.float32
        # Every kind runs this checkpoint, in its own precision.
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.75, name

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-fp16.onnx", "model-fp32.onnx", "model-int8.onnx"]
