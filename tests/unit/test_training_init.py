"""Starting from a checkpoint's weights (``--init``): what is copied, what stays fresh, what is
frozen, the head's own learning rate, mismatches as one line; and the options torchvision's
reference users expect (AdamW, clipping, EMA, mixed precision). Transfer itself, features that
help a small budget, is shown in test_training.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from samples import PHOTO_FOLDER_CLASSES, fashion_test_set, fashion_train_set, write_photo_folder
from typer.testing import CliRunner

from resnet_serve.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from resnet_serve.cli import app
from resnet_serve.datasets import InMemoryDataset
from resnet_serve.errors import CheckpointError, TrainingError
from resnet_serve.models import create_model
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import SilentReporter
from resnet_serve.training import TrainConfig, make_optimizer, train, train_on_folder
from resnet_serve.training.run import cpu_has_bfloat16
from resnet_serve.training.weights import build_model

SOURCE_PREPROCESSING = Preprocessing(
    channels=3, height=24, width=24, mean=(0.45, 0.44, 0.43), std=(0.22, 0.23, 0.24), interpolation="bicubic", resize=28
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos") / "folder", per_class=8, sides=(24, 60))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 checkpoint for 10 other classes, with preprocessing of its own."""
    torch.manual_seed(11)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    meta = CheckpointMeta(architecture="resnet20", num_classes=10, in_channels=3,
                          class_names=[f"other{i}" for i in range(10)], preprocessing=SOURCE_PREPROCESSING)
    return save_checkpoint(tmp_path_factory.mktemp("source") / "source.safetensors", model=model, meta=meta)


def fine_tune(photos: Path, source: Path, output: Path, **changes: object):
    options = dict(epochs=1, batch_size=8, lr=0.05, workers=0, val_split=0.25, evaluate_each_epoch=False)
    return train_on_folder(output=output, data_dir=photos, init_from=source, reporter=SilentReporter(),
                           **{**options, **changes})


def test_init_copies_every_tensor_but_a_head_for_other_classes(photos: Path, source: Path) -> None:
    config = TrainConfig(architecture="resnet20")
    model, meta = build_model(config, class_names=list(PHOTO_FOLDER_CLASSES), in_channels=3, init_from=source)
    weights = load_checkpoint(source).model.state_dict()
    copied = model.state_dict()
    assert meta.class_names == [f"other{i}" for i in range(10)]
    assert all(torch.equal(copied[name], weights[name]) for name in copied if not name.startswith("fc."))
    assert copied["fc.weight"].shape == (4, 64)

    # A checkpoint of the same classes gives its head too.
    same, _ = build_model(config, class_names=[f"other{i}" for i in range(10)], in_channels=3, init_from=source)
    assert torch.equal(same.state_dict()["fc.weight"], weights["fc.weight"])


def test_a_checkpoint_that_does_not_fit_is_one_line_naming_the_tensors(photos: Path, source: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"weights do not match resnet32: .*missing \(layer1\.3\.") as raised:
        build_model(TrainConfig(architecture="resnet32"), class_names=["a", "b"], in_channels=3, init_from=source)
    assert "\n" not in str(raised.value)
    # ResNet-20_b's projection shortcuts have weights that ResNet-20's (option A) have not.
    result = CliRunner().invoke(app, ["train", "--init", str(source), "--arch", "resnet20_b", "--data", str(photos),
                                      "--batch-size", "8", "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "weights do not match resnet20_b: 12 missing (layer2.0.downsample.0.weight" in result.output
    assert not list(tmp_path.iterdir())


def test_fine_tuning_keeps_the_sources_preprocessing_unless_told_and_frozen_parts_stay(
    photos: Path, source: Path, tmp_path: Path
) -> None:
    before = load_checkpoint(source).model.state_dict()
    result = fine_tune(photos, source, tmp_path / "kept.safetensors", trainable="last-stage")
    checkpoint = load_checkpoint(result.checkpoint)
    meta = checkpoint.meta
    assert meta.architecture == "resnet20" and meta.class_names == list(PHOTO_FOLDER_CLASSES)
    assert meta.preprocessing == SOURCE_PREPROCESSING
    assert meta.training["init_from"] == "source.safetensors"
    assert_frozen(before, checkpoint.model.state_dict(), frozen=("conv1", "bn1", "layer1", "layer2"))

    # Each field the user sets replaces the source's; a linear probe trains the head alone.
    changed = fine_tune(photos, source, tmp_path / "changed.safetensors", image_size=16, mean=(0.5, 0.5, 0.5),
                        trainable="head")
    checkpoint = load_checkpoint(changed.checkpoint)
    preprocessing = checkpoint.meta.preprocessing
    assert (preprocessing.height, preprocessing.resize, preprocessing.mean, preprocessing.std) == (
        16, 18, (0.5, 0.5, 0.5), SOURCE_PREPROCESSING.std)
    assert_frozen(before, checkpoint.model.state_dict(), frozen=("conv1", "bn1", "layer1", "layer2", "layer3"))


def assert_frozen(before: dict, after: dict, *, frozen: tuple[str, ...]) -> None:
    """The ``frozen`` parts kept their weights and running statistics; the others trained."""
    for name, tensor in after.items():
        if name.startswith(frozen):
            assert torch.equal(tensor, before[name]), name
        elif name.endswith(("weight", "running_mean")) and not name.startswith("fc."):
            assert not torch.equal(tensor, before[name]), name


def test_the_head_has_a_learning_rate_of_its_own() -> None:
    model = create_model("resnet20", num_classes=4)
    optimizer = make_optimizer(model, TrainConfig(lr=0.01, head_lr=0.1, weight_decay=1e-4))
    rates = {(group["lr"], group["weight_decay"]): len(group["params"]) for group in optimizer.param_groups}
    # Backbone: 19 convolutions decayed, 19 BatchNorms × 2 not; head: weight decayed, bias not.
    assert rates == {(0.01, 1e-4): 19, (0.01, 0.0): 38, (0.1, 1e-4): 1, (0.1, 0.0): 1}
    adamw = make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3))
    assert isinstance(adamw, torch.optim.AdamW)


@pytest.fixture(scope="module")
def fashion() -> tuple[InMemoryDataset, InMemoryDataset]:
    test_set = fashion_test_set()
    return fashion_train_set(), InMemoryDataset(
        images=test_set.images[:200], labels=test_set.labels[:200], class_names=test_set.class_names
    )


def test_clipping_bounds_each_step(fashion: tuple[InMemoryDataset, InMemoryDataset], tmp_path: Path) -> None:
    train_set, test_set = fashion
    # 2 plain SGD steps (no momentum, no decay): each moves the weights by at most lr × the clip.
    config = TrainConfig(limit=128, batch_size=64, epochs=1, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                         warmup=0.0, schedule="constant", clip_grad_norm=1e-3, evaluate_each_epoch=False)
    start, _ = build_model(config, class_names=train_set.class_names, in_channels=1, init_from=None)
    result = train(config=config, train_set=train_set, val_set=test_set, output=tmp_path / "c.safetensors",
                   reporter=SilentReporter())
    after = load_checkpoint(result.checkpoint).model
    with torch.no_grad():
        moved = torch.cat([(a - b).flatten() for a, b in zip(after.parameters(), start.parameters(), strict=True)])
    assert 0 < float(moved.norm()) <= 2 * 0.1 * 1e-3 * (1 + 1e-5)


def test_adamw_with_an_ema_writes_an_exportable_ema_checkpoint(
    fashion: tuple[InMemoryDataset, InMemoryDataset], tmp_path: Path
) -> None:
    train_set, test_set = fashion
    config = TrainConfig(limit=128, batch_size=64, epochs=1, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                         ema_decay=0.5)
    result = train(config=config, train_set=train_set, val_set=test_set, output=tmp_path / "a.safetensors",
                   reporter=SilentReporter())
    assert result.ema_checkpoint == tmp_path / "a.ema.safetensors"
    ema, last = load_checkpoint(result.ema_checkpoint), load_checkpoint(result.checkpoint)
    assert ema.meta.metrics["test_accuracy"] == result.ema_val_top1 == result.history[-1].ema_top1
    assert ema.meta.preprocessing == last.meta.preprocessing
    assert not torch.equal(ema.model.state_dict()["conv1.weight"], last.model.state_dict()["conv1.weight"])
    assert all(stats.ema_top1 is not None and stats.val_top1 is not None for stats in result.history)


def test_bfloat16_on_the_cpu_runs_where_the_cpu_has_it(
    fashion: tuple[InMemoryDataset, InMemoryDataset], tmp_path: Path
) -> None:
    train_set, test_set = fashion
    config = TrainConfig(limit=128, batch_size=64, epochs=1, amp="bf16", device="cpu", evaluate_each_epoch=False)
    if not cpu_has_bfloat16():
        with pytest.raises(TrainingError, match="needs bfloat16 instructions"):
            train(config=config, train_set=train_set, val_set=test_set, output=tmp_path / "b.safetensors",
                  reporter=SilentReporter())
        return
    result = train(config=config, train_set=train_set, val_set=test_set, output=tmp_path / "b.safetensors",
                   reporter=SilentReporter())
    assert np.isfinite(result.train_loss) and load_checkpoint(result.checkpoint).model.conv1.weight.dtype == torch.float32
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        train(config=dataclasses.replace(config, amp="fp16"), train_set=train_set, val_set=test_set,
              output=tmp_path / "f.safetensors", reporter=SilentReporter())
