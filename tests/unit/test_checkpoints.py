"""Checkpoints: safetensors round trips, foreign (torchvision/timm) weights, and every way a
file can be wrong."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from resnet_serve.checkpoints import (
    IMAGENET_PREPROCESSING,
    CheckpointMeta,
    imagenet_class_names,
    import_foreign_weights,
    load_checkpoint,
    load_state_dict_file,
    read_checkpoint_meta,
    save_checkpoint,
)
from resnet_serve.cli import app
from resnet_serve.datasets import FASHION_MNIST_CLASSES
from resnet_serve.errors import CheckpointError
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing

PREPROCESSING = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))


def make_meta(**changes: object) -> CheckpointMeta:
    fields: dict = dict(
        architecture="resnet20",
        num_classes=10,
        in_channels=1,
        class_names=list(FASHION_MNIST_CLASSES),
        preprocessing=PREPROCESSING,
        metrics={"test_accuracy": 0.91},
        training={"epochs": 3, "lr": 0.2},
    )
    fields.update(changes)
    return CheckpointMeta(**fields)


@pytest.fixture
def trained_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    # A few train-mode passes move BatchNorm's running statistics off their defaults,
    # so the round trip covers buffers as well as parameters.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 28, 28))
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path: Path, trained_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "model.safetensors", model=trained_model, meta=make_meta())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left

    checkpoint = load_checkpoint(path)
    assert not checkpoint.model.training
    inputs = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(checkpoint.model(inputs), trained_model(inputs), rtol=0, atol=0)

    meta = checkpoint.meta
    assert meta.architecture == "resnet20" and meta.class_names == list(FASHION_MNIST_CLASSES)
    assert meta.preprocessing == PREPROCESSING and meta.input_shape == (1, 28, 28)
    assert meta.metrics == {"test_accuracy": 0.91} and meta.training == {"epochs": 3, "lr": 0.2}
    assert meta.version and meta.created
    assert read_checkpoint_meta(path) == meta


def test_save_replaces_an_existing_file(tmp_path: Path, trained_model: torch.nn.Module) -> None:
    path = tmp_path / "sub" / "model.safetensors"
    save_checkpoint(path, model=trained_model, meta=make_meta(metrics={"test_accuracy": 0.5}))
    save_checkpoint(path, model=trained_model, meta=make_meta(metrics={"test_accuracy": 0.9}))
    assert read_checkpoint_meta(path).metrics == {"test_accuracy": 0.9}
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]


def test_missing_and_corrupt_files(tmp_path: Path, trained_model: torch.nn.Module) -> None:
    with pytest.raises(CheckpointError, match="absent.safetensors: no such file"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")
    good = save_checkpoint(tmp_path / "good.safetensors", model=trained_model, meta=make_meta())
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(tmp_path / "cut.safetensors")
    torch.save(trained_model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="pickled checkpoints are not loaded"):
        load_checkpoint(tmp_path / "model.pt")


def test_safetensors_without_our_metadata(tmp_path: Path, trained_model: torch.nn.Module) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file(dict(trained_model.state_dict()), str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="without resnet-serve metadata"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"resnet_serve": "{oops"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    bad = make_meta().to_dict() | {"preprocessing": {"channels": 1}}
    save_file({"w": torch.zeros(1)}, str(path), metadata={"resnet_serve": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="invalid preprocessing: missing height"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path: Path, trained_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", model=trained_model, meta=make_meta(architecture="resnet7"))
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet7'"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_architecture(tmp_path: Path, trained_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "a.safetensors", model=trained_model, meta=make_meta(architecture="resnet32"))
    with pytest.raises(CheckpointError, match=r"weights do not match resnet32: 72 missing \(layer1\.3\."):
        load_checkpoint(path)

    hundred = create_model("resnet20", num_classes=100, in_channels=1)
    path = save_checkpoint(tmp_path / "b.safetensors", model=hundred, meta=make_meta())
    with pytest.raises(CheckpointError, match=r"2 of another shape \(fc.weight \(100, 64\) ≠ \(10, 64\)"):
        load_checkpoint(path)

    plain = create_model("plain20", num_classes=10, in_channels=1)
    path = save_checkpoint(tmp_path / "c.safetensors", model=plain, meta=make_meta(architecture="resnet18"))
    with pytest.raises(CheckpointError, match="missing .*unexpected .*of another shape"):
        load_checkpoint(path)


def test_meta_must_be_consistent() -> None:
    with pytest.raises(CheckpointError, match="9 class names for a 10-class model"):
        make_meta(class_names=list(FASHION_MNIST_CLASSES)[:9])
    with pytest.raises(CheckpointError, match="preprocessing gives 1 channels, the model takes 3"):
        make_meta(in_channels=3)
    with pytest.raises(CheckpointError, match="invalid num_classes"):
        CheckpointMeta.from_dict(make_meta().to_dict() | {"num_classes": "10"})


# --- foreign weights -------------------------------------------------------------------------

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def timm_resnet_keys(blocks: tuple[int, ...], *, bottleneck: bool) -> list[str]:
    """The state-dict names timm 1.0 (timm/models/resnet.py) gives a standard ResNet.

    Written from timm's source rather than from our model: stem ``conv1``/``bn1``, stages
    ``layer1``-``layer4`` of blocks with ``convK``/``bnK``, a projection shortcut
    ``downsample.0`` (conv) / ``downsample.1`` (BN) where stride or width changes, head ``fc``.
    """
    keys = ["conv1.weight", *(f"bn1.{entry}" for entry in BN_ENTRIES)]
    for stage, count in enumerate(blocks, start=1):
        for index in range(count):
            block = f"layer{stage}.{index}"
            for k in range(1, 4 if bottleneck else 3):
                keys += [f"{block}.conv{k}.weight", *(f"{block}.bn{k}.{entry}" for entry in BN_ENTRIES)]
            if index == 0 and (stage > 1 or bottleneck):
                keys += [f"{block}.downsample.0.weight", *(f"{block}.downsample.1.{entry}" for entry in BN_ENTRIES)]
    return keys + ["fc.weight", "fc.bias"]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with BatchNorm statistics off their defaults, so buffers are compared too."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def fake_weights(name: str) -> dict[str, torch.Tensor]:
    """Zero weights of an architecture without the cost of initialising them."""
    with torch.device("meta"):
        shapes = {key: t.shape for key, t in create_model(name).state_dict().items()}
    return {key: torch.zeros(shape) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    torch.manual_seed(0)
    return perturbed(create_model("resnet50"))


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return perturbed(create_model("resnet18"))


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory: pytest.TempPathFactory, resnet18: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18.state_dict(), path)
    return path


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(a(inputs), b(inputs), rtol=0, atol=0)


def test_torchvision_state_dict_round_trips(tmp_path: Path, resnet50: torch.nn.Module) -> None:
    pth = tmp_path / "resnet50-v1.5.pth"
    torch.save(resnet50.state_dict(), pth)
    imported = import_foreign_weights(pth, architecture="resnet50")
    assert not imported.replaced_head and not imported.missing and not imported.unexpected
    assert_same_outputs(imported.model, resnet50)

    # ImageNet weights serve labelled answers with ImageNet's preprocessing.
    meta = imported.meta
    assert meta.num_classes == 1000 and meta.class_names[207] == "golden retriever"
    assert meta.preprocessing == IMAGENET_PREPROCESSING and meta.input_shape == (3, 224, 224)
    assert meta.training == {"imported_from": "resnet50-v1.5.pth"}

    # Through our format and back.
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "r50.safetensors", model=imported.model, meta=meta))
    assert_same_outputs(checkpoint.model, resnet50)
    assert checkpoint.meta == meta


def test_timm_layout_loads(tmp_path: Path, resnet50: torch.nn.Module) -> None:
    ours = resnet50.state_dict()
    keys = timm_resnet_keys((3, 4, 6, 3), bottleneck=True)
    assert sorted(keys) == sorted(ours)
    assert sorted(timm_resnet_keys((2, 2, 2, 2), bottleneck=False)) == sorted(fake_weights("resnet18"))

    # As the Hugging Face hub ships timm weights: bare safetensors, here also without
    # BatchNorm's step counter, which some exports drop.
    timm_weights = {key: ours[key].clone() for key in keys if not key.endswith("num_batches_tracked")}
    path = tmp_path / "model.safetensors"
    save_file(timm_weights, str(path))
    imported = import_foreign_weights(path, architecture="resnet50")
    assert_same_outputs(imported.model, resnet50)
    assert not imported.missing


def test_training_containers_and_wrapper_prefixes(tmp_path: Path, resnet18: torch.nn.Module) -> None:
    wrapped = {f"_orig_mod.module.{key}": t for key, t in resnet18.state_dict().items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 90, "model": {"state_dict": wrapped}, "best_acc1": 0.7}, path)
    weights = load_state_dict_file(path)
    assert sorted(weights) == sorted(resnet18.state_dict())
    assert_same_outputs(import_foreign_weights(path, architecture="resnet18").model, resnet18)

    torch.save({"epoch": 90, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match=r"no state dict .* found a mapping with keys epoch, optimizer"):
        load_state_dict_file(path)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        load_state_dict_file(tmp_path / "junk.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown weights format '.npz'"):
        load_state_dict_file(tmp_path / "w.npz")


def _touch(path: str) -> None:
    Path(path).touch()


class Booby:
    """Unpickling this calls ``_touch``: what a malicious checkpoint would do with worse code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (_touch, (str(self.marker),))


@pytest.mark.parametrize("form", ["zip", "legacy", "raw"])
def test_pickles_with_code_are_refused_unexecuted_naming_the_callable(
    tmp_path: Path, resnet18: torch.nn.Module, form: str
) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "trap.pth"
    checkpoint = {"state_dict": resnet18.state_dict(), "args": Booby(marker)}
    if form == "raw":
        # A plain pickle, as pickle.dump writes it, which torch.load reads too. Without the
        # tensors: pickled by plain pickle they would be refused first, for their own loader.
        path.write_bytes(pickle.dumps({"args": Booby(marker)}, protocol=2))
    else:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=form == "zip")
    with pytest.raises(CheckpointError, match=r"refusing .*trap.pth: loading it would call test_checkpoints\._touch,"):
        import_foreign_weights(path, architecture="resnet18")
    assert not marker.exists()
    # The trap is real: an unrestricted load runs it.
    if form == "raw":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_mismatched_weights_give_a_readable_diff(tmp_path: Path, resnet18_pth: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(fake_weights("resnet34"), path)
    with pytest.raises(CheckpointError) as caught:
        import_foreign_weights(path, architecture="resnet50")
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(
        r".*resnet34.pth: weights do not match resnet50: \d+ missing \(layer1\.0\.conv3\.weight, .* more\)\); "
        r"\d+ of another shape \(layer1\.0\.conv1\.weight \(64, 64, 3, 3\) ≠ \(64, 64, 1, 1\), .* more\)\)",
        message,
    ), message
    with pytest.raises(CheckpointError, match=r"weights do not match resnet18: 96 unexpected \(layer1\.2\.conv1\.weight, "):
        import_foreign_weights(path, architecture="resnet18")

    # Non-strict tolerates absent and extra keys (and reports them), never another shape.
    with pytest.raises(CheckpointError, match=r"weights do not match resnet50: \d+ of another shape"):
        import_foreign_weights(path, architecture="resnet50", strict=False)
    imported = import_foreign_weights(path, architecture="resnet18", strict=False)
    assert len(imported.unexpected) == 96 and not imported.missing
    imported = import_foreign_weights(resnet18_pth, architecture="resnet34", strict=False)
    assert imported.missing[0] == "layer1.2.conv1.weight" and not imported.unexpected
    assert not any(name.endswith("num_batches_tracked") for name in imported.missing)


def test_head_replaced_for_another_number_of_classes(
    tmp_path: Path, resnet18_pth: Path, resnet18: torch.nn.Module
) -> None:
    imported = import_foreign_weights(resnet18_pth, architecture="resnet18", num_classes=10)
    assert imported.replaced_head
    assert imported.model.fc.weight.shape == (10, 512)
    assert imported.meta.num_classes == 10 and imported.meta.class_names[:2] == ["class_0", "class_1"]
    assert imported.meta.training["head_replaced"] is True
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(imported.model.forward_features(inputs), resnet18.forward_features(inputs))

    # A headless backbone (timm's num_classes=0) gets a head only when one is asked for.
    backbone = tmp_path / "backbone.safetensors"
    save_file({k: t for k, t in resnet18.state_dict().items() if not k.startswith("fc.")}, str(backbone))
    assert import_foreign_weights(backbone, architecture="resnet18", num_classes=3).replaced_head
    with pytest.raises(CheckpointError, match=r"2 missing \(fc\.weight, fc\.bias\)"):
        import_foreign_weights(backbone, architecture="resnet18")

    names = [f"kind {i}" for i in range(10)]
    assert import_foreign_weights(resnet18_pth, architecture="resnet18", num_classes=10, class_names=names).meta.class_names == names
    with pytest.raises(CheckpointError, match="3 class names for a 1000-class model"):
        import_foreign_weights(resnet18_pth, architecture="resnet18", class_names=["a", "b", "c"])


def test_imagenet_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[1], names[207], names[999]) == ("tench", "goldfish", "golden retriever", "toilet tissue")
    assert all(name and name == name.strip() for name in names)


def test_import_command_writes_an_exportable_checkpoint(tmp_path: Path, resnet18_pth: Path) -> None:
    runner = CliRunner()
    output = tmp_path / "r18.safetensors"
    result = runner.invoke(app, ["import", str(resnet18_pth), "--arch", "resnet18", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert read_checkpoint_meta(output).class_names[0] == "tench"

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"label {i}\n" for i in range(5)))
    result = runner.invoke(
        app, ["import", str(resnet18_pth), "-a", "resnet18", "--num-classes", "5", "--classes", str(labels), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert read_checkpoint_meta(output).class_names[4] == "label 4"

    result = runner.invoke(app, ["import", str(resnet18_pth), "-a", "resnet18", "--classes", "absent.txt", "-o", str(output)])
    assert result.exit_code == 1
    assert "absent.txt: unreadable class names" in result.output and "Traceback" not in result.output
