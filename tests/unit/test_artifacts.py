"""A checkpoint's derived models are made on first use, once, and say how they were made."""

from __future__ import annotations

from pathlib import Path

import pytest
from samples import fashion_mnist, fashion_resnet20

from resnet_serve.artifacts import Artifacts
from resnet_serve.checkpoints import Checkpoint
from resnet_serve.errors import ExportError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    model, meta = fashion_resnet20(seed=1)
    return Checkpoint(model=model, meta=meta, path=tmp_path_factory.mktemp("ckpt") / "r20.safetensors")


def test_files_are_made_only_when_asked_for_and_only_once(checkpoint: Checkpoint, tmp_path: Path) -> None:
    calls = []

    def calibration():
        calls.append(1)
        return fashion_mnist(32)

    artifacts = Artifacts(checkpoint, workdir=tmp_path, calibration=calibration)
    assert list(tmp_path.iterdir()) == [] and artifacts.notes == {}
    assert artifacts.folded_model is artifacts.folded_model
    assert artifacts.folding.folded == 19 and list(tmp_path.iterdir()) == []

    fp32 = artifacts.onnx_fp32
    assert [p.name for p in tmp_path.iterdir()] == ["model-fp32.onnx"]
    assert fp32 == tmp_path / "model-fp32.onnx" and artifacts.onnx_export.batchnorm_nodes == 0

    assert artifacts.onnx_int8 == artifacts.onnx_int8 == tmp_path / "model-int8.onnx"
    assert calls == [1]
    assert artifacts.notes == {
        "model-int8.onnx": "static QDQ, per-channel weights, minmax calibration on 32 training images; "
        f"kept in FP32: {', '.join(artifacts.int8.kept_fp32)}"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-fp32.onnx", "model-int8.onnx"]


def test_int8_without_calibration_images_is_one_clear_error(checkpoint: Checkpoint, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="the INT8 model needs calibration images"):
        _ = Artifacts(checkpoint, workdir=tmp_path).onnx_int8
