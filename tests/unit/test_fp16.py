"""FP16 conversion of a folded ResNet-20 export: half-precision weights, FP32 inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from samples import fashion_mnist

from resnet_serve.errors import ExportError
from resnet_serve.export.fp16 import convert_fp16
from resnet_serve.export.onnx import export_onnx
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.runtimes import OnnxRuntime
from resnet_serve.samples import with_realistic_batchnorm


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = with_realistic_batchnorm(
        create_model("resnet20", in_channels=1), torch.from_numpy(fashion_mnist(64)), seed=1
    )
    path = tmp_path_factory.mktemp("fp16") / "fp32.onnx"
    return export_onnx(fold_batchnorm(model).model, path, input_shape=(1, 28, 28)).path


def test_fp16_weights_with_fp32_io_agree_with_fp32(fp32_path: Path, tmp_path: Path) -> None:
    result = convert_fp16(fp32_path, tmp_path / "fp16.onnx")

    proto = onnx.load(result.path)
    types = {init.data_type for init in proto.graph.initializer if len(init.dims)}
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types
    assert result.fp16_initializers > 0 and result.cast_nodes >= 2
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.size_bytes < 0.6 * result.source_size_bytes

    images = fashion_mnist(200)
    fp32 = OnnxRuntime(fp32_path).run(images)
    fp16 = OnnxRuntime(result.path).run(images[:8])
    assert fp16.dtype == np.float32
    assert np.abs(fp16 - fp32[:8]).max() < 1e-2 * np.abs(fp32).max()
    assert (OnnxRuntime(result.path).run(images).argmax(1) == fp32.argmax(1)).mean() >= 0.99


def test_fp16_io_when_asked(fp32_path: Path, tmp_path: Path) -> None:
    result = convert_fp16(fp32_path, tmp_path / "fp16.onnx", keep_io_types=False)
    proto = onnx.load(result.path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert OnnxRuntime(result.path).run(fashion_mnist(2)).shape == (2, 10)


def test_unreadable_model_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="FP16 conversion of .*broken.onnx failed"):
        convert_fp16(broken, tmp_path / "out" / "fp16.onnx")
    assert not (tmp_path / "out").exists()
