"""Runtimes on real Fashion-MNIST images: PyTorch, onnxruntime and OpenVINO behind one
interface, and the one registry of named kinds built from a checkpoint's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from samples import fashion_mnist
from torch import nn

from resnet_serve.errors import VerificationError
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.runtimes import (
    RUNTIMES,
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    compare_runtimes,
    get_runtime_kind,
)
from resnet_serve.samples import with_realistic_batchnorm


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
    path = tmp_path_factory.mktemp("runtimes") / "resnet20.onnx"
    return export_onnx(fold_batchnorm(model).model, path, input_shape=(1, 28, 28)).path


def test_runtimes_follow_the_protocol(model: nn.Module, onnx_path: Path) -> None:
    for runtime in (TorchRuntime(model), OnnxRuntime(onnx_path, threads=1)):
        assert isinstance(runtime, Runtime)


def test_onnxruntime_reproduces_pytorch_on_real_images(model: nn.Module, onnx_path: Path, images: np.ndarray) -> None:
    result = compare_runtimes(TorchRuntime(model), OnnxRuntime(onnx_path), images[:20], batch_sizes=(1, 8))

    assert (result.reference, result.candidate, result.n_images) == ("pytorch", "onnxruntime", 20)
    assert [p.batch_size for p in result.per_batch] == [1, 8]  # batch 8 ends with a batch of 4
    assert 0 < result.max_abs_relative <= 1e-5
    assert 0 < result.mean_rel < 1e-5
    assert result.top1_agreement == 1.0


def test_a_runtime_against_itself_is_exact(model: nn.Module, images: np.ndarray) -> None:
    runtime = TorchRuntime(model)
    result = compare_runtimes(runtime, runtime, images[:4], batch_sizes=(4,))
    assert (result.max_abs, result.mean_rel, result.top1_agreement) == (0.0, 0.0, 1.0)


def test_graph_optimizations_off_runs_the_file_as_written(onnx_path: Path, images: np.ndarray) -> None:
    plain = OnnxRuntime(onnx_path, graph_optimizations=False)
    optimised = OnnxRuntime(onnx_path)
    assert plain.session.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
    assert np.abs(plain.run(images[:8]) - optimised.run(images[:8])).max() <= 1e-4


def test_inputs_of_the_wrong_rank_are_refused(model: nn.Module, images: np.ndarray) -> None:
    with pytest.raises(VerificationError, match="NCHW"):
        compare_runtimes(TorchRuntime(model), TorchRuntime(model), images[0], batch_sizes=(1,))


def test_unloadable_onnx_files_raise_verification_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(VerificationError, match="onnxruntime cannot load .*corrupt.onnx"):
        OnnxRuntime(corrupt)
    with pytest.raises(VerificationError, match="does not exist"):
        OnnxRuntime(tmp_path / "missing.onnx")


def test_unknown_runtime_kinds_are_refused_with_the_choices() -> None:
    assert "tensorrt" not in RUNTIMES  # an export format here, not a runtime
    with pytest.raises(VerificationError, match="unknown runtime 'onnx-int4'; choose one of torch, torch-folded"):
        get_runtime_kind("onnx-int4")


# OpenVINO's runtimes, and the registry's every kind, are tested in test_verify.py, which runs
# after every test that trains: with OpenVINO loaded first, PyTorch training in the same process
# crashed in its OpenMP runtime (libgomp's team barrier).
