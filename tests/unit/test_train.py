"""Training: a tiny real run on Fashion-MNIST, its checkpoint, determinism and the pieces it uses."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_serve.checkpoints import load_checkpoint
from resnet_serve.datasets import InMemoryDataset, load_default_dataset
from resnet_serve.errors import TrainingError, UnknownArchitectureError
from resnet_serve.train import (
    DEMO_TRAIN_CONFIG,
    RECIPES,
    TrainConfig,
    _augment,
    _epoch_batches,
    _learning_rate,
    _prepare_tensors,
    evaluate,
    recipe_config,
    train,
    train_on_folder,
    train_state_path,
)

TINY = TrainConfig(architecture="resnet20", epochs=1, batch_size=64, lr=0.05, limit=512, num_threads=2, seed=3)


class RecordingReporter:
    """A real Reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, description: str, total: int | None = None) -> None:
        self.events.append(("start", (description, total)))

    def advance(self, steps: int = 1, **fields: float | str) -> None:
        self.events.append(("advance", fields))

    def finish(self) -> None:
        self.events.append(("finish", None))

    def message(self, text: str) -> None:
        self.events.append(("message", text))


@pytest.fixture(scope="module")
def datasets() -> tuple[InMemoryDataset, InMemoryDataset]:
    train_set = load_default_dataset(split="train")
    test_set = load_default_dataset(split="test")
    small_test = InMemoryDataset(images=test_set.images[:500], labels=test_set.labels[:500],
                              class_names=test_set.class_names)
    return train_set, small_test


def test_tiny_run_writes_a_loadable_checkpoint(tmp_path: Path, datasets: tuple[InMemoryDataset, InMemoryDataset]) -> None:
    train_set, test_set = datasets
    reporter = RecordingReporter()
    result = train(config=TINY, train_set=train_set, test_set=test_set,
                   output=tmp_path / "tiny.safetensors", reporter=reporter)

    assert result.epochs == 1 and len(result.history) == 1
    assert 0.0 <= result.test_accuracy <= 1.0 and np.isfinite(result.train_loss)
    advances = [fields for kind, fields in reporter.events if kind == "advance"]
    assert reporter.events[0] == ("start", ("epoch 1/1", 512 // 64)) and len(advances) == 8
    assert set(advances[-1]) == {"loss", "accuracy", "lr"}

    checkpoint = load_checkpoint(result.checkpoint)
    meta = checkpoint.meta
    assert meta.architecture == "resnet20" and meta.num_classes == 10 and meta.input_shape == (1, 28, 28)
    assert meta.class_names == train_set.class_names
    assert meta.metrics["test_accuracy"] == result.test_accuracy
    assert meta.training["limit"] == 512 and meta.training["train_images"] == 512
    # Mean and std come from the 512 training images the run saw.
    pixels = train_set.images[:512] / 255.0
    assert meta.preprocessing.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
    assert meta.preprocessing.std[0] == pytest.approx(pixels.std(), abs=1e-4)

    inputs = torch.from_numpy(meta.preprocessing.normalize(test_set.images))
    accuracy = evaluate(checkpoint.model, inputs, torch.from_numpy(test_set.labels))
    assert accuracy == pytest.approx(result.test_accuracy)


def test_same_seed_gives_identical_weights(tmp_path: Path, datasets: tuple[InMemoryDataset, InMemoryDataset]) -> None:
    train_set, test_set = datasets
    config = dataclasses.replace(TINY, limit=256)
    runs = [
        train(config=config, train_set=train_set, test_set=test_set,
              output=tmp_path / f"{name}.safetensors", reporter=RecordingReporter())
        for name in ("a", "b")
    ]
    first, second = (load_checkpoint(run.checkpoint).model.state_dict() for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert runs[0].train_loss == runs[1].train_loss

    other = train(config=dataclasses.replace(config, seed=4), train_set=train_set, test_set=test_set,
                  output=tmp_path / "c.safetensors", reporter=RecordingReporter())
    third = load_checkpoint(other.checkpoint).model.state_dict()
    assert not torch.equal(first["conv1.weight"], third["conv1.weight"])


def test_augment_crops_and_flips_per_image() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    fill = torch.tensor([-1.0])
    assert torch.equal(_augment(batch, pad=0, flip=False, fill=fill, generator=generator), batch)

    out = _augment(batch, pad=1, flip=False, fill=fill, generator=generator)
    assert out.shape == batch.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1), value=-1.0)
    for n in range(2):
        windows = [padded[n, :, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[n], window) for window in windows)

    flipped = _augment(batch.repeat(16, 1, 1, 1), pad=0, flip=True, fill=fill, generator=generator)
    same = [torch.equal(image, batch[i % 2]) for i, image in enumerate(flipped)]
    mirrored = [torch.equal(image, batch[i % 2].flip(2)) for i, image in enumerate(flipped)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)


@pytest.mark.parametrize("flip", [False, True])
def test_no_flip_trains_on_unmirrored_images(flip: bool, datasets: tuple[InMemoryDataset, InMemoryDataset]) -> None:
    # What SGD sees in a pass of real Fashion-MNIST images, with crops off so that each image is
    # either one of the training images or its mirror.
    train_set, test_set = datasets
    config = dataclasses.replace(TINY, limit=256, pad=0, flip=flip)
    tensors = _prepare_tensors(config, train_set, test_set)
    originals = tensors.train_inputs.flatten(1)
    mirrors = tensors.train_inputs.flip(3).flatten(1)
    batches = _epoch_batches(tensors.train_inputs, tensors.train_labels, steps=4, config=config, fill=tensors.fill,
                             generator=torch.Generator().manual_seed(0))
    images = torch.cat([inputs for inputs, _ in batches]).flatten(1)

    assert len(images) == 256
    original = (images[:, None] == originals[None]).all(2).any(1)
    mirrored = (images[:, None] == mirrors[None]).all(2).any(1)
    assert bool((original | mirrored).all())
    if flip:
        assert 64 < int((mirrored & ~original).sum()) < 192  # about half, each a coin toss
    else:
        assert bool(original.all()) and not (mirrored & ~original).any()


def test_recipe_config_keeps_the_recipe_where_an_option_is_none() -> None:
    assert recipe_config("cifar", pad=None, flip=None, epochs=None) == RECIPES["cifar"]
    changed = recipe_config("cifar", pad=0, flip=False, architecture="plain20")
    assert (changed.pad, changed.flip, changed.architecture) == (0, False, "plain20")
    assert dataclasses.replace(changed, pad=4, flip=True, architecture="resnet20") == RECIPES["cifar"]
    with pytest.raises(TrainingError, match="pad must be ≥ 0"):
        recipe_config("demo", pad=-1)
    with pytest.raises(TrainingError, match="unknown recipe 'cifar100'"):
        recipe_config("cifar100")


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(lr=0.2, warmup=0.1)
    rates = [_learning_rate(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.02) and rates[9] == pytest.approx(0.2)
    assert max(rates) == pytest.approx(0.2) and rates[-1] < 1e-3
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))


def test_demo_config_is_the_full_fashion_mnist_recipe() -> None:
    assert DEMO_TRAIN_CONFIG.architecture == "resnet20" and DEMO_TRAIN_CONFIG.limit is None


def test_fractional_epochs_end_the_schedule_part_way(tmp_path: Path, datasets: tuple[InMemoryDataset, InMemoryDataset]) -> None:
    train_set, test_set = datasets
    reporter = RecordingReporter()
    config = dataclasses.replace(TINY, epochs=1.5, batch_size=128)  # 4 steps per pass → 6 steps
    result = train(config=config, train_set=train_set, test_set=test_set, output=tmp_path / "c.safetensors", reporter=reporter)
    starts = [value for kind, value in reporter.events if kind == "start"]
    assert starts == [("epoch 1/2", 4), ("epoch 2/2", 2)]
    assert sum(kind == "advance" for kind, _ in reporter.events) == 6
    assert result.epochs == 1.5 and len(result.history) == 2


@pytest.mark.parametrize(
    "change,error",
    [({"epochs": 0}, TrainingError), ({"batch_size": 0}, TrainingError), ({"lr": -1.0}, TrainingError),
     ({"limit": 0}, TrainingError), ({"pad": -1}, TrainingError), ({"architecture": "resnet21"}, UnknownArchitectureError),
     ({"schedule": "linear"}, TrainingError), ({"milestones": (0.75, 0.5)}, TrainingError),
     ({"milestones": (1.0,)}, TrainingError), ({"warmup": 1.0}, TrainingError)],
)
def test_impossible_configs_fail_before_training(change: dict, error: type) -> None:
    with pytest.raises(error):
        dataclasses.replace(TINY, **change)


class InterruptedReporter(RecordingReporter):
    """Stops the run the way Ctrl-C does, as the given epoch starts."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.prefix = f"epoch {epoch}/"

    def start(self, description: str, total: int | None = None) -> None:
        if description.startswith(self.prefix):
            raise KeyboardInterrupt
        super().start(description, total)


def test_resumed_run_ends_with_the_uninterrupted_weights(
    tmp_path: Path, datasets: tuple[InMemoryDataset, InMemoryDataset]
) -> None:
    train_set, test_set = datasets
    test_set = InMemoryDataset(images=test_set.images[:100], labels=test_set.labels[:100], class_names=test_set.class_names)
    # 2 steps per epoch; the step schedule drops the rate exactly where the run is cut, and
    # crops, flips and Nesterov momentum all carry state across the cut.
    config = dataclasses.replace(TINY, limit=128, epochs=2, schedule="step", milestones=(0.5,),
                                 evaluate_each_epoch=True, num_threads=1)
    whole = train(config=config, train_set=train_set, test_set=test_set, output=tmp_path / "whole.safetensors",
                  reporter=RecordingReporter())

    cut = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(config=config, train_set=train_set, test_set=test_set, output=cut, reporter=InterruptedReporter(2))
    assert load_checkpoint(cut).meta.training["step"] == 2 and train_state_path(cut).is_file()
    reporter = RecordingReporter()
    resumed = train(config=config, train_set=train_set, test_set=test_set, output=cut, reporter=reporter,
                    resume_from=cut)

    assert [value for kind, value in reporter.events if kind == "start"] == [("epoch 2/2", 2)]
    expected, actual = (load_checkpoint(run.checkpoint).model.state_dict() for run in (whole, resumed))
    assert all(torch.allclose(expected[name].float(), actual[name].float(), atol=1e-6) for name in expected)
    assert resumed.test_accuracy == pytest.approx(whole.test_accuracy)
    assert [(s.epoch, s.train_loss, s.lr) for s in resumed.history] == [(s.epoch, s.train_loss, s.lr) for s in whole.history]
    assert [s.lr for s in whole.history] == pytest.approx([0.05, 0.005])

    # One CSV row per epoch, in the documented columns, and a PNG plot beside the checkpoint.
    rows = list(csv.DictReader(resumed.history_csv.open()))
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "test_accuracy", "lr", "seconds"]
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert float(rows[1]["test_accuracy"]) == pytest.approx(resumed.test_accuracy)
    assert resumed.history_csv.parent == cut.parent
    assert resumed.history_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config=config, train_set=train_set, test_set=test_set, output=cut, reporter=RecordingReporter(),
              resume_from=cut)
    with pytest.raises(TrainingError, match="lr=0.05"):
        train(config=dataclasses.replace(config, lr=0.1), train_set=train_set, test_set=test_set, output=cut,
              reporter=RecordingReporter(), resume_from=cut)


def test_step_schedule_divides_by_ten_at_each_milestone() -> None:
    config = TrainConfig(lr=0.1, schedule="step", milestones=(0.5, 0.75), warmup=0.0)
    rates = [_learning_rate(step, 100, config) for step in range(100)]
    assert rates[:50] == [0.1] * 50
    assert rates[50:75] == pytest.approx([0.01] * 25) and rates[75:] == pytest.approx([0.001] * 25)


def test_recipes() -> None:
    assert RECIPES["demo"] is DEMO_TRAIN_CONFIG
    # The demo keeps flips only: in so short a run random crops cost accuracy.
    assert (DEMO_TRAIN_CONFIG.pad, DEMO_TRAIN_CONFIG.flip) == (0, True)
    cifar = RECIPES["cifar"]
    # He et al. 2015, Sec. 4.2.
    assert (cifar.batch_size, cifar.lr, cifar.momentum, cifar.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (cifar.schedule, cifar.milestones, cifar.pad, cifar.flip) == ("step", (0.5, 0.75), 4, True)
    imagenet = RECIPES["imagenet"]
    assert (imagenet.schedule, imagenet.label_smoothing, imagenet.lr * 256 / imagenet.batch_size) == ("cosine", 0.1, 0.1)
    assert imagenet.warmup > 0 and (imagenet.pad, imagenet.flip) == (4, True)


def test_unknown_recipe_fails_before_reading_data(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="unknown recipe 'cifar100'"):
        train_on_folder(recipe="cifar100", output=tmp_path / "x.safetensors", data_dir=tmp_path / "missing")
