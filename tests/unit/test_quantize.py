"""INT8 (static QDQ) quantization of a trained ResNet-20, checked against FP32 on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from samples import fashion_mnist

from resnet_serve.checkpoints import Checkpoint, load_checkpoint
from resnet_serve.datasets import load_default_dataset
from resnet_serve.errors import ExportError
from resnet_serve.export.onnx import export_onnx
from resnet_serve.export.quantize import MIN_CALIBRATION_IMAGES, quantize_int8
from resnet_serve.fold import fold_batchnorm
from resnet_serve.runtimes import OnnxRuntime


@pytest.fixture(scope="module")
def trained(trained_resnet20: Path) -> Checkpoint:
    return load_checkpoint(trained_resnet20)


@pytest.fixture(scope="module")
def fp32_path(trained: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(
        fold_batchnorm(trained.model).model, tmp_path_factory.mktemp("quantize") / "fp32.onnx",
        input_shape=trained.meta.preprocessing.input_shape, metadata={"architecture": "resnet20"},
    ).path


@pytest.fixture(scope="module")
def calibration(trained: Checkpoint) -> np.ndarray:
    train = load_default_dataset(split="train")
    return trained.meta.preprocessing.normalize(train.images[-128:])


def test_int8_keeps_the_fp32_top1_on_real_images(
    trained: Checkpoint, fp32_path: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    result = quantize_int8(fp32_path, tmp_path / "int8.onnx", calibration_images=calibration)

    proto = onnx.load(result.path)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.quantize_nodes > 0 and result.dequantize_nodes > result.quantize_nodes
    assert (result.method, result.per_channel, result.calibration_images) == ("minmax", True, 128)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata["architecture"] == "resnet20" and metadata["precision"] == "int8"
    assert result.size_bytes < result.source_size_bytes / 2
    # The dynamic batch axis survives quantization.
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    assert _top1_agreement(trained, fp32_path, result.path) >= 0.97
    # The stem convolution and the classifier stay FP32: their weights are plain initializers.
    first_conv = next(node for node in proto.graph.node if node.op_type == "Conv")
    classifier = next(node for node in proto.graph.node if node.op_type in ("Gemm", "MatMul"))
    assert {first_conv.input[1], classifier.input[1]} <= _initializers(proto)
    assert result.kept_fp32 == (first_conv.name, classifier.name) and not result.reduce_range
    assert list(tmp_path.iterdir()) == [result.path]


def test_quantizing_the_ends_too_leaves_no_float_weight(
    fp32_path: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    result = quantize_int8(fp32_path, tmp_path / "int8.onnx", calibration_images=calibration, keep_ends_fp32=False)

    proto = onnx.load(result.path)
    assert result.kept_fp32 == () and result.reduce_range
    assert not any(node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in _initializers(proto)
                   for node in proto.graph.node)
    assert OnnxRuntime(result.path).run(fashion_mnist(4)).shape == (4, 10)


@pytest.mark.parametrize(("reduce_range", "largest"), [(True, 64), (False, 127)])
def test_reduce_range_quantizes_weights_to_7_bits(
    fp32_path: Path, calibration: np.ndarray, tmp_path: Path, reduce_range: bool, largest: int
) -> None:
    result = quantize_int8(
        fp32_path, tmp_path / "int8.onnx", calibration_images=calibration[:32], reduce_range=reduce_range
    )

    # 7 bits keep u8×s8 pair sums inside int16 (255·64·2 < 32768) on CPUs without VNNI.
    weights = [numpy_helper.to_array(t) for t in onnx.load(result.path).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == largest


def test_entropy_calibration_clips_ranges_that_minmax_keeps_whole(
    fp32_path: Path, calibration: np.ndarray, tmp_path: Path
) -> None:
    minmax = _activation_scales(quantize_int8(fp32_path, tmp_path / "minmax.onnx", calibration_images=calibration[:32]).path)
    result = quantize_int8(fp32_path, tmp_path / "entropy.onnx", calibration_images=calibration[:32], method="entropy")
    entropy = _activation_scales(result.path)

    assert result.method == "entropy" and OnnxRuntime(result.path).run(fashion_mnist(4)).shape == (4, 10)
    assert minmax.keys() == entropy.keys()
    ratios = np.array([entropy[name] / minmax[name] for name in minmax])
    # Never wider than the values seen; narrower wherever a long tail was cut off.
    assert (ratios <= 1 + 1e-5).all() and (ratios < 0.9).sum() >= len(ratios) // 4


def _initializers(proto: onnx.ModelProto) -> set[str]:
    return {tensor.name for tensor in proto.graph.initializer}


def _activation_scales(path: Path) -> dict[str, float]:
    proto = onnx.load(path)
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    return {
        node.input[0]: float(values[node.input[1]])
        for node in proto.graph.node
        if node.op_type == "QuantizeLinear" and node.input[1] in values and values[node.input[1]].ndim == 0
    }


def _top1_agreement(trained: Checkpoint, fp32_path: Path, int8_path: Path) -> float:
    images = trained.meta.preprocessing.normalize(load_default_dataset(split="test").images[:300])
    return float((OnnxRuntime(fp32_path).run(images).argmax(1) == OnnxRuntime(int8_path).run(images).argmax(1)).mean())


def test_percentile_calibration_quantizes(fp32_path: Path, calibration: np.ndarray, tmp_path: Path) -> None:
    result = quantize_int8(fp32_path, tmp_path / "int8.onnx", calibration_images=calibration[:32], method="percentile")
    assert result.method == "percentile"
    assert OnnxRuntime(result.path).run(fashion_mnist(4)).shape == (4, 10)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((MIN_CALIBRATION_IMAGES - 1, 1, 28, 28), np.float32), "too few"),
        (np.zeros((32, 3, 28, 28), np.float32), "3×28×28 but the model takes 1×28×28"),
        (np.zeros((32, 28, 28), np.float32), "N×C×H×W"),
        (np.full((32, 1, 28, 28), np.nan, np.float32), "NaN"),
        (np.zeros((32, 1, 28, 28), np.uint8), "preprocessed floats"),
    ],
)
def test_bad_calibration_sets_are_refused_and_nothing_is_written(
    fp32_path: Path, tmp_path: Path, images: np.ndarray, message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        quantize_int8(fp32_path, tmp_path / "int8.onnx", calibration_images=images)
    assert list(tmp_path.iterdir()) == []


def test_unknown_method_is_refused(fp32_path: Path, calibration: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown calibration method 'kl'"):
        quantize_int8(fp32_path, tmp_path / "int8.onnx", calibration_images=calibration, method="kl")  # type: ignore[arg-type]
