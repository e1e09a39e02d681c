"""ONNX export of a folded ResNet, run back through the real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from samples import fashion_mnist, with_realistic_batchnorm

from resnet_serve.errors import ExportError
from resnet_serve.export import OnnxExportResult, count_ops, export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model

METADATA = {"architecture": "resnet20", "dataset": "fashion-mnist"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return fashion_mnist(64)


@pytest.fixture(scope="module")
def model(images: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    return with_realistic_batchnorm(
        create_model("resnet20", in_channels=1), torch.from_numpy(images[32:]), seed=1
    )


@pytest.fixture(scope="module")
def exported(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> OnnxExportResult:
    path = tmp_path_factory.mktemp("onnx") / "resnet20.onnx"
    return export_onnx(
        fold_batchnorm(model).model, path, input_shape=(1, 28, 28), metadata=METADATA
    )


def test_export_writes_one_checked_file_without_batchnorm(exported: OnnxExportResult) -> None:
    assert exported.path.is_file()
    assert [p.name for p in exported.path.parent.iterdir()] == ["resnet20.onnx"]
    assert exported.size_bytes == exported.path.stat().st_size
    assert exported.opset == 17
    assert exported.batchnorm_nodes == 0
    assert exported.op_counts["Conv"] == 19  # stem + 18 block convs; option-A shortcuts have none
    assert exported.op_counts == count_ops(exported.path) == count_ops(onnx.load(exported.path))
    proto = onnx.load(exported.path)
    assert {p.key: p.value for p in proto.metadata_props} == METADATA
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert exported.to_dict()["path"] == str(exported.path)


def test_dynamic_batch_matches_pytorch_on_real_images(
    exported: OnnxExportResult, model: nn.Module, images: np.ndarray
) -> None:
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, 28, 28]
    with torch.no_grad():
        expected = model(torch.from_numpy(images[:8])).numpy()
    for batch in (images[:1], images[1:8]):
        (logits,) = session.run(["logits"], {"input": batch})
        assert logits.shape == (len(batch), 10)
    (logits,) = session.run(["logits"], {"input": images[:8]})
    assert np.abs(logits - expected).max() <= 1e-4
    assert np.array_equal(logits.argmax(1), expected.argmax(1))


def test_static_batch_export(model: nn.Module, tmp_path: Path) -> None:
    result = export_onnx(model, tmp_path / "static.onnx", input_shape=(1, 28, 28), dynamic_batch=False)
    shape = onnx.load(result.path).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 1, 28, 28]
    assert not result.dynamic_batch


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model cannot run")


def test_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    with pytest.raises(ExportError, match="this model cannot run"):
        export_onnx(_Unexportable(), target, input_shape=(1, 8, 8))

    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert target.read_bytes() == b"the previous export"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input_shape": (28, 28)}, "input_shape"),
        ({"input_shape": (1, 28, 28), "opset": 9}, "opset 9 is not supported"),
        ({"input_shape": (1, 28, 28), "metadata": {"epochs": 3}}, "str to str"),
    ],
)
def test_bad_arguments_raise_before_writing(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=message):
        export_onnx(nn.Conv2d(1, 1, 1), tmp_path / "m.onnx", **options)
    assert list(tmp_path.iterdir()) == []
