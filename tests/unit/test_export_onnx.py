"""ONNX export of a folded ResNet, run back through the real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hostile import classifier_graph, onnx_with_external_weight
from onnx import numpy_helper
from samples import fashion_mnist
from torch import nn

from resnet_serve.errors import ExportError
from resnet_serve.export.onnx import OnnxExportResult, OnnxOptions, count_ops, export_onnx, load_onnx_safely
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model
from resnet_serve.preprocessing import MAX_IMAGE_SIDE
from resnet_serve.samples import with_realistic_batchnorm

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
        ({"input_shape": (1, 28, 28), "metadata": {"epochs": 3}}, "str to str"),
    ],
)
def test_bad_arguments_raise_before_writing(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=message):
        export_onnx(nn.Conv2d(1, 1, 1), tmp_path / "m.onnx", **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"opset": 9}, "opset 9 is not supported"),
        ({"exporter": "dynamo", "opset": 17}, "not supported by the dynamo"),
        ({"exporter": "jit"}, "unknown exporter"),
    ],
)
def test_bad_onnx_options_are_refused_on_construction(options: dict, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        OnnxOptions(**options)


def test_onnx_options_resolve_the_default_opset_per_exporter() -> None:
    assert (OnnxOptions().opset, OnnxOptions(exporter="dynamo").opset) == (17, 18)


def test_weights_over_two_gib_are_refused_before_exporting(tmp_path: Path) -> None:
    # On the meta device the 2.3 GiB of weights exist only as shapes.
    huge = nn.Linear(24_000, 24_000, device="meta")
    with pytest.raises(ExportError, match="2 GiB"):
        export_onnx(huge, tmp_path / "huge.onnx", input_shape=(1, 1, 24_000))
    assert list(tmp_path.iterdir()) == []


def test_dynamic_height_and_width_run_at_another_size(model: nn.Module, images: np.ndarray, tmp_path: Path) -> None:
    result = export_onnx(model, tmp_path / "hw.onnx", input_shape=(1, 28, 28), options=OnnxOptions(dynamic_hw=True))
    assert result.dynamic_hw
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, "height", "width"]
    larger = torch.nn.functional.interpolate(torch.from_numpy(images[:4]), size=36, mode="bilinear")
    with torch.no_grad():
        expected = model(larger).numpy()
    (logits,) = session.run(["logits"], {"input": larger.numpy()})
    assert np.abs(logits - expected).max() <= 1e-4


def test_simplify_removes_nodes_and_keeps_results_and_metadata(
    model: nn.Module, images: np.ndarray, exported: OnnxExportResult, tmp_path: Path
) -> None:
    result = export_onnx(
        fold_batchnorm(model).model, tmp_path / "simple.onnx", input_shape=(1, 28, 28),
        options=OnnxOptions(simplify=True), simplify_images=images[:16], metadata=METADATA,
    )
    assert result.simplified_nodes_removed == sum(exported.op_counts.values()) - sum(result.op_counts.values()) > 0
    parity = result.simplify_parity
    assert parity is not None and parity.n_images == 16 and [p.batch_size for p in parity.per_batch] == [1, 16]
    assert parity.max_abs_relative <= 1e-5 and parity.top1_agreement == 1.0
    assert "Identity" not in result.op_counts and result.op_counts["Conv"] == 19
    proto = onnx.load(result.path)
    assert {p.key: p.value for p in proto.metadata_props} == METADATA
    assert [o.domain for o in proto.opset_import] == [""]  # no onnxruntime-only domains declared
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(images[:8])).numpy()
    assert np.abs(session.run(None, {"input": images[:8]})[0] - expected).max() <= 1e-4


class _SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.conv(x)))
        return self.head(nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))


def test_dynamo_exporter_writes_opset_18_quietly(
    images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    net = with_realistic_batchnorm(_SmallNet(), torch.from_numpy(images[:16]), seed=3).train()
    result = export_onnx(net, tmp_path / "dynamo.onnx", input_shape=(1, 28, 28), options=OnnxOptions(exporter="dynamo"), metadata=METADATA)
    assert net.training  # the caller's mode is restored
    assert capsys.readouterr().out == ""
    assert (result.exporter, result.opset, result.dynamic_batch) == ("dynamo", 18, True)
    assert [p.name for p in tmp_path.iterdir()] == ["dynamo.onnx"]  # no external data file
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(images[:8])).numpy()
    assert np.abs(session.run(None, {"input": images[:8]})[0] - expected).max() <= 1e-4


# ---- load_onnx_safely: a user's file is checked before anything it points to is opened.


def test_safe_loader_accepts_external_data_inside_the_folder(tmp_path: Path) -> None:
    proto = load_onnx_safely(onnx_with_external_weight(tmp_path, "weight.bin"))
    assert numpy_helper.to_array(proto.graph.initializer[0]).shape == (4, 1, 3, 3)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside/weight.bin", "sub/../../outside/weight.bin"])
def test_safe_loader_refuses_external_data_outside_the_folder(tmp_path: Path, location: str) -> None:
    path = onnx_with_external_weight(tmp_path / "model", location)
    # The target exists, so only the check (not a missing file) can stop the load.
    (tmp_path / "outside").mkdir()
    (tmp_path / "model" / "weight.bin").replace(tmp_path / "outside" / "weight.bin")
    with pytest.raises(ExportError, match=r"refusing .*model\.onnx: external data of tensor 'weight' (uses the absolute|points to)"):
        load_onnx_safely(path)


def test_safe_loader_refuses_a_symlink_pointing_outside(tmp_path: Path) -> None:
    path = onnx_with_external_weight(tmp_path / "model", "weight.bin")
    (tmp_path / "secret.bin").write_bytes((tmp_path / "model" / "weight.bin").read_bytes())
    (tmp_path / "model" / "weight.bin").unlink()
    (tmp_path / "model" / "weight.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ExportError, match="resolves outside the model's folder"):
        load_onnx_safely(path)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"\x08\x07 this is not protobuf \xff\xff"), "is not a valid ONNX model"),
        (lambda p: p.write_bytes(b""), "is not a valid ONNX model"),
        (lambda p: onnx.save(classifier_graph(conv=False), p), "not a ResNet-like image classifier: it has no Conv"),
        (lambda p: onnx.save(classifier_graph(inputs=2), p), "2 inputs and 1 outputs"),
    ],
)
def test_safe_loader_refuses_malformed_or_foreign_graphs(tmp_path: Path, write, message: str) -> None:
    path = tmp_path / "user.onnx"
    write(path)
    with pytest.raises(ExportError, match=message):
        load_onnx_safely(path)


def test_safe_loader_bounds_fixed_image_sides_before_any_image_is_made(tmp_path: Path) -> None:
    path = tmp_path / "user.onnx"
    for height, width in ((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), ("height", "width"), (1, 100_000)):
        onnx.save(classifier_graph(height=height, width=width), path)
        if isinstance(height, str) or max(height, width) <= MAX_IMAGE_SIDE:
            assert load_onnx_safely(path).graph.input[0].name == "x"
        else:
            with pytest.raises(ExportError, match=r"input 'x' is 1×100000, over the 4096 pixels a side may have"):
                load_onnx_safely(path)
