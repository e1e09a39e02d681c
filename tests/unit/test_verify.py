"""Parity between PyTorch and onnxruntime on real Fashion-MNIST images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from samples import fashion_mnist, with_realistic_batchnorm
from torch import nn

from resnet_serve.errors import VerificationError
from resnet_serve.export import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.verify import (
    OnnxRuntime,
    ParityResult,
    Runtime,
    TorchRuntime,
    check_parity,
    compare_runtimes,
    verify_onnx_export,
)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return fashion_mnist(52)


@pytest.fixture(scope="module")
def model(images: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1)
    return with_realistic_batchnorm(model, torch.from_numpy(images[20:]), seed=3)


@pytest.fixture(scope="module")
def onnx_path(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "resnet20.onnx"
    return export_onnx(fold_batchnorm(model).model, path, input_shape=(1, 28, 28)).path


class _FixedLogits:
    """A runtime that answers the same logits whatever it is asked."""

    name = "fixed"

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), self.classes), dtype=np.float32)


def test_runtimes_follow_the_protocol(model: nn.Module, onnx_path: Path) -> None:
    for runtime in (TorchRuntime(model), OnnxRuntime(onnx_path, threads=1), _FixedLogits(10)):
        assert isinstance(runtime, Runtime)


def test_parity_figures_for_onnxruntime(model: nn.Module, onnx_path: Path, images: np.ndarray) -> None:
    result = compare_runtimes(
        TorchRuntime(model), OnnxRuntime(onnx_path), images[:20], batch_sizes=(1, 8)
    )

    assert (result.reference, result.candidate, result.n_images) == ("pytorch", "onnxruntime", 20)
    assert [p.batch_size for p in result.per_batch] == [1, 8]  # batch 8 ends with a batch of 4
    assert 0 < result.max_abs <= 1e-4
    assert 0 < result.mean_rel < 1e-5
    assert result.top1_agreement == 1.0
    assert result.max_abs == max(p.max_abs for p in result.per_batch)
    assert result.mean_rel == max(p.mean_rel for p in result.per_batch)
    assert json.loads(json.dumps(result.to_dict()))["per_batch"][1]["batch_size"] == 8


def test_runtime_against_itself_is_exact(model: nn.Module, images: np.ndarray) -> None:
    runtime = TorchRuntime(model)
    result = compare_runtimes(runtime, runtime, images[:4], batch_sizes=(4,))
    assert (result.max_abs, result.mean_rel, result.top1_agreement) == (0.0, 0.0, 1.0)


def test_verify_onnx_export_passes_for_a_faithful_export(
    model: nn.Module, onnx_path: Path, images: np.ndarray
) -> None:
    result = verify_onnx_export(model, onnx_path, images[:16], atol=1e-4)
    assert isinstance(result, ParityResult)
    assert [p.batch_size for p in result.per_batch] == [1, 8]


def test_perturbed_model_fails_verification(
    model: nn.Module, onnx_path: Path, images: np.ndarray
) -> None:
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.layer2[0].conv1.weight.mul_(1.01)

    with pytest.raises(VerificationError, match=r"differs from pytorch by up to .* at batch 1 \(tolerance 0\.0001\)"):
        verify_onnx_export(perturbed, onnx_path, images[:16], atol=1e-4)


def test_top1_disagreement_fails_even_within_tolerance(model: nn.Module, images: np.ndarray) -> None:
    result = compare_runtimes(TorchRuntime(model), _FixedLogits(10), images[:8], batch_sizes=(8,))
    assert result.top1_agreement < 1.0
    with pytest.raises(VerificationError, match="top-1 class of only"):
        check_parity(result, atol=float("inf"))
    check_parity(result, atol=float("inf"), min_top1_agreement=0.0)


def test_mismatched_outputs_and_inputs_are_rejected(model: nn.Module, images: np.ndarray) -> None:
    torch_runtime = TorchRuntime(model)
    with pytest.raises(VerificationError, match="logits of shape"):
        compare_runtimes(torch_runtime, _FixedLogits(7), images[:2], batch_sizes=(2,))
    with pytest.raises(VerificationError, match="NCHW"):
        compare_runtimes(torch_runtime, torch_runtime, images[0], batch_sizes=(1,))
    with pytest.raises(VerificationError, match="at least that many images"):
        verify_onnx_export(model, "unused.onnx", images[:4])


def test_unloadable_onnx_files_raise_verification_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(VerificationError, match="onnxruntime cannot load .*corrupt.onnx"):
        OnnxRuntime(corrupt)
    with pytest.raises(VerificationError, match="does not exist"):
        OnnxRuntime(tmp_path / "missing.onnx")


# --- OpenVINO, named runtimes and `resnet-serve verify` ---------------------------------------

from samples import FASHION_PREPROCESSING  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from resnet_serve.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from resnet_serve.cli import app  # noqa: E402
from resnet_serve.errors import MissingDependencyError  # noqa: E402
from resnet_serve.runtimes import OpenVinoRuntime, RuntimeFactory  # noqa: E402
from resnet_serve.verify import run_batched  # noqa: E402


def test_openvino_fp32_matches_onnxruntime_and_bf16_agrees(onnx_path: Path, images: np.ndarray) -> None:
    expected = OnnxRuntime(onnx_path).run(images)
    fp32 = OpenVinoRuntime(onnx_path, precision="fp32", threads=1)
    assert fp32.name == "openvino-fp32" and fp32.inference_precision == "f32"
    assert np.abs(run_batched(fp32, images, 8) - expected).max() <= 1e-4
    bf16 = OpenVinoRuntime(onnx_path, precision="bf16", threads=1)
    assert bf16.inference_precision in ("bf16", "f32")  # f32 where the CPU has no BF16
    assert (bf16.run(images).argmax(1) == expected.argmax(1)).mean() >= 0.97


@pytest.fixture(scope="module")
def checkpoint(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = CheckpointMeta(
        architecture="resnet20", num_classes=10, in_channels=1,
        class_names=[f"class {i}" for i in range(10)], preprocessing=FASHION_PREPROCESSING,
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "r20.safetensors", model=model, meta=meta)


def test_factory_builds_named_runtimes_and_refuses_unknown_ones(checkpoint: Path, tmp_path: Path) -> None:
    factory = RuntimeFactory(load_checkpoint(checkpoint), workdir=tmp_path)
    folded = factory.build("torch-folded")
    fp16 = factory.build("onnx-fp16")
    assert (folded.name, fp16.name) == ("torch-folded", "onnx-fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-fp16.onnx", "model-fp32.onnx"]
    assert run_batched(fp16, fashion_mnist(4), 4).shape == (4, 10)
    with pytest.raises(VerificationError, match="unknown runtime 'onnx-int4'"):
        factory.build("onnx-int4")
    with pytest.raises(VerificationError, match="need calibration images"):
        factory.build("onnx-int8")
    with pytest.raises(MissingDependencyError, match="TensorRT"):
        factory.build("tensorrt")


def test_cli_verify_passes_within_thresholds_and_writes_json(checkpoint: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "verify.json"
    result = CliRunner().invoke(app, [
        "verify", str(checkpoint), "--reference", "torch", "--candidate", "openvino-fp32",
        "--images", "40", "--batch-sizes", "1,16", "--max-abs", "1e-3", "--min-agreement", "1",
        "--max-accuracy-drop", "0", "--json", str(report_path),
    ])
    assert result.exit_code == 0, result.output
    assert "openvino-fp32 vs torch on 40 test images" in result.output
    report = json.loads(report_path.read_text())
    assert report["parity"]["top1_agreement"] == 1.0
    assert report["parity"]["reference_top1"] == report["parity"]["candidate_top1"]
    assert [p["batch_size"] for p in report["parity"]["per_batch"]] == [1, 16]


def test_cli_verify_fails_with_one_line_when_a_threshold_is_missed(checkpoint: Path) -> None:
    result = CliRunner().invoke(app, [
        "verify", str(checkpoint), "--candidate", "onnx-fp32", "--images", "16",
        "--batch-sizes", "8", "--max-abs", "1e-12",
    ])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "tolerance 1e-12" in lines[0], result.output
