"""Parity between PyTorch and onnxruntime on real Fashion-MNIST images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from samples import fashion_mnist, with_realistic_batchnorm

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
