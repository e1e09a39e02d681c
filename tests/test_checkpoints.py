"""Checkpoints: safetensors round trips and every way a file can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resnet_serve.checkpoints import CheckpointMeta, load_checkpoint, read_checkpoint_meta, save_checkpoint
from resnet_serve.data import FASHION_MNIST_CLASSES, Preprocessing
from resnet_serve.errors import CheckpointError
from resnet_serve.models import create_model

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
