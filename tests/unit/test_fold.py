"""BatchNorm folding on every architecture family of the registry, checked on real images."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from samples import FASHION_PREPROCESSING, fashion_mnist, photo_image_folder
from torch import nn
from typer.testing import CliRunner

from resnet_serve.checkpoints import CheckpointMeta, save_checkpoint
from resnet_serve.cli import app
from resnet_serve.errors import ExportError, VerificationError
from resnet_serve.export.onnx import count_ops, export_onnx
from resnet_serve.fold import fold_batchnorm, fold_onnx_batchnorm
from resnet_serve.models import create_model
from resnet_serve.parity import DEFAULT_RTOL, Tolerance, check_parity
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.runtimes import OnnxRuntime, TorchRuntime, compare_runtimes
from resnet_serve.samples import photo_crops, with_realistic_batchnorm, with_trained_magnitudes


def inputs_for(name: str) -> tuple[int, torch.Tensor]:
    if name.startswith(("resnet2", "plain2")):
        return 1, torch.from_numpy(fashion_mnist(16))
    # ImageNet nets: real images at 64×64 and three channels keep the test fast.
    images = F.interpolate(torch.from_numpy(fashion_mnist(4)), size=64, mode="bilinear", align_corners=False)
    return 3, images.repeat(1, 3, 1, 1)


# Folding is exact arithmetic, but randomly initialised ImageNet nets amplify the float32
# rounding of their weights: moving every weight by about one ulp alone shifts resnet50's
# logits by ~6e-5 and plain50's by ~1e-3. So those are checked in float64, where the fold must
# be exact to rounding, and the CIFAR nets at the float32 tolerance.
@pytest.mark.parametrize(
    ("name", "dtype", "atol"),
    [
        ("resnet20", torch.float32, 1e-5),
        ("plain20", torch.float32, 1e-5),
        ("resnet18", torch.float64, 1e-10),
        ("resnet50", torch.float64, 1e-10),
        ("plain50", torch.float64, 1e-10),
    ],
)
def test_folded_model_matches_original(name: str, dtype: torch.dtype, atol: float) -> None:
    torch.manual_seed(0)
    in_channels, images = inputs_for(name)
    model = create_model(name, num_classes=10, in_channels=in_channels).to(dtype)
    images = images.to(dtype)
    model = with_realistic_batchnorm(model, images, seed=1)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    result = fold_batchnorm(model)

    assert result.folded == len(batchnorms)
    assert result.unfolded == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None and m.weight.dtype == dtype for m in convs)
    # Each fold drops γ and β (2C) and adds a conv bias (C).
    assert result.params_after == result.params_before - sum(b.num_features for b in batchnorms)
    with torch.no_grad():
        expected, actual = model(images), result.model(images)
    assert expected.abs().max() > 0.1  # the comparison below is not between near-zero logits
    assert (actual - expected).abs().max().item() <= atol
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_input_model_is_untouched_and_names_are_kept() -> None:
    model = create_model("resnet18", num_classes=10)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = fold_batchnorm(model)

    assert model.training and not result.model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    folded_keys = set(result.model.state_dict())
    conv_weights = {k for k in before if k.endswith(".weight") and "conv" in k}
    assert conv_weights | {"layer2.0.downsample.0.weight"} <= folded_keys
    assert {"conv1.bias", "layer3.1.conv2.bias", "layer2.0.downsample.0.bias"} <= folded_keys
    assert isinstance(result.model.layer2[0].downsample[1], nn.Identity)


class _SharedConvOutput(nn.Module):
    """A conv whose output is read by a BatchNorm and by an addition: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_batchnorm_without_a_foldable_conv_is_reported_and_kept() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 12, 12)
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), _SharedConvOutput()
    )
    model[3].conv = nn.Conv2d(8, 3, 3, padding=1)
    model = with_realistic_batchnorm(model, images, seed=2)

    result = fold_batchnorm(model)

    assert result.folded == 1
    assert result.unfolded == ["0", "3.bn"]
    assert isinstance(result.model[2], nn.Identity)
    with torch.no_grad():
        assert (result.model(images) - model(images)).abs().max().item() <= 1e-5


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_model_raises_export_error() -> None:
    with pytest.raises(ExportError, match="cannot trace _DataDependent"):
        fold_batchnorm(_DataDependent())


def test_preactivation_blocks_fold_what_they_can_and_report_the_rest() -> None:
    torch.manual_seed(0)
    images = torch.from_numpy(fashion_mnist(16))
    model = with_realistic_batchnorm(create_model("preact_resnet20", in_channels=1), images, seed=4)

    result = fold_batchnorm(model)

    # Each block's bn2 follows conv1; bn1 (after the residual sum) and final_bn cannot fold.
    assert result.folded == 9
    assert result.unfolded == [*(f"layer{s}.{b}.bn1" for s in (1, 2, 3) for b in range(3)), "final_bn"]
    assert result.unfolded_reasons["layer2.0.bn1"] == "not fed by a convolution"
    assert result.to_dict()["unfolded_reasons"] == result.unfolded_reasons
    with torch.no_grad():
        assert (result.model(images) - model(images)).abs().max().item() <= 1e-5


# ---- the ONNX graph pass


def _export_unfolded(model: nn.Module, path: Path) -> Path:
    """Export keeping BatchNormalization nodes: in EVAL mode the legacy exporter folds them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(2, 1, 28, 28),), path, dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    return fashion_mnist(64)


# resnet20_b has 1×1 projection shortcuts; pre-activation graphs are covered by the CLI test.
@pytest.mark.parametrize(("name", "folded", "left"), [("resnet20_b", 21, 0)])
def test_onnx_pass_folds_every_conv_batchnorm_pair(
    name: str, folded: int, left: int, real_images: np.ndarray, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = with_realistic_batchnorm(create_model(name, in_channels=1), torch.from_numpy(real_images[32:]), seed=1)
    unfolded = _export_unfolded(model, tmp_path / "unfolded.onnx")
    assert count_ops(unfolded)["BatchNormalization"] == folded + left
    in_pytorch = fold_batchnorm(model)
    folded_channels = sum(
        m.num_features for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and n not in in_pytorch.unfolded
    )

    report = fold_onnx_batchnorm(unfolded, tmp_path / "folded.onnx", images=real_images)

    assert (report.folded, report.batchnorm_nodes, len(report.unfolded)) == (folded, left, left)
    assert count_ops(report.path).get("BatchNormalization", 0) == left
    assert report.parity is not None and report.parity.n_images == 64
    assert report.parity.top1_agreement == 1.0
    # The bound comes from the arithmetic, measured on this CPU's own kernels (AVX2 and AVX-512
    # sum in different orders): folding is exact in exact arithmetic, so folded32 - unfolded32 =
    # (folded32 - exact) - (unfolded32 - exact). The folded graph runs the same convolutions with
    # each weight rounded once more (relative 2^-24, the size of one float32 product's rounding),
    # so its own float32 error is at most about twice the unfolded graph's: the difference is
    # then at most about 3x the unfolded graph's error; 4x leaves room for the rounding of the
    # folded biases. A real defect (a dropped epsilon, a wrong channel) is orders above it.
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(torch.from_numpy(real_images).double()).numpy()
    run = {path: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
           .run(None, {"input": real_images})[0] for path in (unfolded, report.path)}
    unfolded_error = np.abs(run[unfolded] - exact).max()
    assert np.abs(run[report.path] - exact).max() <= 2 * unfolded_error
    assert report.parity.max_abs <= 4 * unfolded_error
    onnx.checker.check_model(report.path, full_check=True)
    # Each fold stores 3C fewer values: γ, β, mean and var out, a bias in.
    assert report.params_before - report.params_after == 3 * folded_channels
    assert report.folded == in_pytorch.folded
    # Independently of the pass's own check: onnxruntime as served vs PyTorch.
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(real_images)).numpy()
    assert np.abs(session.run(None, {"input": real_images})[0] - expected).max() <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folded.onnx", "unfolded.onnx"]


def _conv_bn_graph() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Two Convs sharing one weight tensor (one with a bias), each feeding a BatchNormalization
    with its own statistics, and a third Conv whose output a BatchNorm and an Add both read."""
    rng = np.random.default_rng(0)
    channels = 4
    tensors = {
        "w": rng.standard_normal((channels, 1, 3, 3)),
        "conv_b": rng.standard_normal(channels),
        "w3": rng.standard_normal((channels, channels, 1, 1)),
    }
    for index in (1, 2, 3):
        for part, values in [
            ("gamma", rng.uniform(0.5, 1.5, channels)), ("beta", rng.normal(0, 0.2, channels)),
            ("mean", rng.normal(0, 0.5, channels)), ("var", rng.uniform(0.5, 2.0, channels)),
        ]:
            tensors[f"bn{index}_{part}"] = values

    def batchnorm(index: int, conv_out: str) -> onnx.NodeProto:
        names = [f"bn{index}_{p}" for p in ("gamma", "beta", "mean", "var")]
        return helper.make_node("BatchNormalization", [conv_out, *names], [f"b{index}"], name=f"bn{index}", epsilon=1e-3)

    nodes = [
        helper.make_node("Conv", ["x", "w", "conv_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        batchnorm(1, "c1"),
        batchnorm(2, "c2"),
        helper.make_node("Add", ["b1", "b2"], ["s"]),
        helper.make_node("Conv", ["s", "w3"], ["c3"], name="conv3"),
        batchnorm(3, "c3"),
    ]
    nodes += [
        helper.make_node("Add", ["b3", "c3"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", channels])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tensors


def test_onnx_pass_handles_biases_shared_weights_and_shared_outputs(real_images: np.ndarray, tmp_path: Path) -> None:
    proto, _ = _conv_bn_graph()
    before = proto.SerializeToString()

    report = fold_onnx_batchnorm(proto, tmp_path / "folded.onnx", images=real_images[:16])

    assert proto.SerializeToString() == before  # the caller's proto is not changed
    assert (report.folded, report.batchnorm_nodes) == (2, 1)
    assert report.unfolded == {"bn3": "its Conv's output is also read elsewhere"}
    assert report.parity is not None and report.parity.max_abs <= 1e-5
    folded = onnx.load(report.path)
    initializers = {t.name for t in folded.graph.initializer}
    # The shared weight and BN parameters of the folded pairs are gone; bn3's stay.
    assert not initializers & {"w", "conv_b", "bn1_gamma", "bn2_var"}
    assert {"w3", "bn3_gamma", "bn3_var"} <= initializers
    convs = {node.name: node for node in folded.graph.node if node.op_type == "Conv"}
    assert len(convs["conv1"].input) == len(convs["conv2"].input) == 3
    assert [convs["conv1"].output[0], convs["conv2"].output[0]] == ["b1", "b2"]


def test_failed_verification_leaves_nothing_behind(real_images: np.ndarray, tmp_path: Path) -> None:
    target = tmp_path / "folded.onnx"
    target.write_bytes(b"the previous fold")

    with pytest.raises(VerificationError, match="folded onnx differs from unfolded onnx"):
        fold_onnx_batchnorm(_conv_bn_graph()[0], target, images=real_images[:4], tolerance=Tolerance(rtol=0.0))

    assert [p.name for p in tmp_path.iterdir()] == ["folded.onnx"]
    assert target.read_bytes() == b"the previous fold"


def test_onnx_pass_refuses_an_unsafe_file_before_writing(tmp_path: Path) -> None:
    (tmp_path / "user.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="is not a valid ONNX model"):
        fold_onnx_batchnorm(tmp_path / "user.onnx", tmp_path / "folded.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["user.onnx"]


# ---- `resnet-serve fold`


def test_fold_command_on_a_checkpoint(real_images: np.ndarray, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = with_realistic_batchnorm(create_model("resnet20_b", in_channels=1), torch.from_numpy(real_images[32:]), seed=5)
    checkpoint = save_checkpoint(
        tmp_path / "r20.safetensors", model=model,
        meta=CheckpointMeta(
            architecture="resnet20_b", num_classes=10, in_channels=1,
            class_names=[f"c{i}" for i in range(10)], preprocessing=FASHION_PREPROCESSING,
        ),
    )

    outcome = CliRunner().invoke(app, ["fold", str(checkpoint), "--verify-images", "32", "--json", str(tmp_path / "r.json")])

    assert outcome.exit_code == 0, outcome.output
    assert "folded 21 BatchNorms" in outcome.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["folded"], report["batchnorm_nodes"], report["unfolded"]) == (21, 0, {})
    assert report["kind"] == "checkpoint" and report["fold_parity"]["n_images"] == 32
    assert report["fold_parity"]["max_abs_relative"] <= 1e-6 and report["onnx_parity"]["max_abs_relative"] <= 1e-5
    assert [p["batch_size"] for p in report["onnx_parity"]["per_batch"]] == [1, 32]
    assert report["output"] == str(tmp_path / "r20.folded.onnx")
    metadata = {p.key: p.value for p in onnx.load(report["output"]).metadata_props}
    assert json.loads(metadata["preprocessing"]) == FASHION_PREPROCESSING.to_dict()


def test_fold_command_on_an_unfolded_onnx_file(real_images: np.ndarray, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = with_realistic_batchnorm(create_model("preact_resnet20", in_channels=1), torch.from_numpy(real_images[32:]), seed=6)
    source = _export_unfolded(model, tmp_path / "user.onnx")
    output = tmp_path / "out" / "folded.onnx"

    outcome = CliRunner().invoke(
        app, ["fold", str(source), "-o", str(output), "--verify-images", "32", "--json", str(tmp_path / "r.json")]
    )

    assert outcome.exit_code == 0, outcome.output
    report = json.loads((tmp_path / "r.json").read_text())
    # No preprocessing metadata in a bare export: mean 0.5, std 0.25 at the graph's 28×28.
    assert (report["kind"], report["preprocessing"], report["fold_parity"]["n_images"]) == ("onnx", "default", 32)
    assert (report["folded"], report["batchnorm_nodes"]) == (9, 10)
    assert report["fold_parity"]["max_abs_relative"] <= 1e-6 and report["onnx_parity"] is None
    assert "not fed by a Conv" in outcome.output
    assert count_ops(output).get("BatchNormalization") == 10


def test_fold_command_refuses_other_files_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"pickle")
    outcome = CliRunner().invoke(app, ["fold", str(tmp_path / "model.pt")])
    assert outcome.exit_code == 1
    assert "expected a .safetensors checkpoint or an .onnx file" in outcome.output
    assert len(outcome.output.strip().splitlines()) == 1


# ---- bug B: one relative tolerance for every logit scale, that still catches real defects


@pytest.fixture(scope="module")
def resnet50_96() -> tuple[nn.Module, np.ndarray]:
    """An ImageNet ResNet-50 with a trained net's magnitudes (logits of a few tens) and real
    photos at 96×96, small enough to keep the test fast."""
    preprocessing = Preprocessing(channels=3, height=96, width=96, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    photos = preprocessing.normalize(photo_crops(8, size=96))
    torch.manual_seed(0)
    model = with_trained_magnitudes(create_model("resnet50"), torch.from_numpy(photos), seed=0)
    return model, photos


def test_fold_command_folds_a_plain_resnet50_export_at_the_defaults(
    resnet50_96: tuple[nn.Module, np.ndarray], tmp_path: Path
) -> None:
    model, _ = resnet50_96
    source = tmp_path / "resnet50.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 96, 96),), source, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)
    photos = photo_image_folder(tmp_path / "photos", classes=2, per_class=4, size=96)

    outcome = CliRunner().invoke(app, ["fold", str(source), "--data", str(photos), "--json", str(tmp_path / "r.json")])

    assert outcome.exit_code == 0, outcome.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["folded"], report["batchnorm_nodes"], report["preprocessing"]) == (53, 0, "default")
    parity = report["fold_parity"]
    assert parity["n_images"] == 8 and parity["top1_agreement"] == 1.0
    assert 0 < parity["max_abs_relative"] <= DEFAULT_RTOL
    # What the absolute 1e-5 this command had refused: float32 rounding at logits of a few tens.
    assert parity["max_abs"] > 1e-5 and parity["reference_max_abs"] > 10


@pytest.fixture(scope="module")
def folded_resnet50_96(resnet50_96: tuple[nn.Module, np.ndarray]) -> nn.Module:
    return fold_batchnorm(resnet50_96[0]).model


def _without_eps(model: nn.Module) -> nn.Module:
    """A fold that leaves out BatchNorm's eps."""
    changed = copy.deepcopy(model)
    for m in changed.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    return fold_batchnorm(changed).model


def _one_weight_off(folded: nn.Module) -> nn.Module:
    """One folded convolution in the middle of the net with every weight 1e-3 too large."""
    changed = copy.deepcopy(folded)
    with torch.no_grad():
        changed.layer3[0].conv3.weight.mul_(1 + 1e-3)
    return changed


def test_a_faithful_fold_passes_and_real_defects_are_refused_at_the_defaults(
    resnet50_96: tuple[nn.Module, np.ndarray], folded_resnet50_96: nn.Module
) -> None:
    model, photos = resnet50_96
    reference = TorchRuntime(model)
    faithful = compare_runtimes(reference, TorchRuntime(folded_resnet50_96), photos, batch_sizes=(8,))
    check_parity(faithful, Tolerance())

    for defect in (_without_eps(model), _one_weight_off(folded_resnet50_96)):
        parity = compare_runtimes(reference, TorchRuntime(defect, name="defect"), photos, batch_sizes=(8,))
        with pytest.raises(VerificationError, match="defect differs from pytorch by up to .* of the largest logit"):
            check_parity(parity, Tolerance())
        # Far above the tolerance, as faithful float32 rounding is far below it.
        assert parity.max_abs_relative > 5 * DEFAULT_RTOL


def test_an_onnx_file_with_one_weight_off_by_a_thousandth_is_refused(
    resnet50_96: tuple[nn.Module, np.ndarray], folded_resnet50_96: nn.Module, tmp_path: Path
) -> None:
    model, photos = resnet50_96
    path = export_onnx(folded_resnet50_96, tmp_path / "folded.onnx", input_shape=(3, 96, 96)).path
    proto = onnx.load(path)
    tensor = next(t for t in proto.graph.initializer if t.name == "layer3.0.conv3.weight")
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(1 + 1e-3), tensor.name))
    onnx.save(proto, path)

    parity = compare_runtimes(TorchRuntime(model), OnnxRuntime(path), photos, batch_sizes=(1, 8))

    with pytest.raises(VerificationError, match="onnxruntime differs from pytorch by up to .* at batch 1"):
        check_parity(parity, Tolerance())
