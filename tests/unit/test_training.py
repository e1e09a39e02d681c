"""Training on real Fashion-MNIST images: one short run whose checkpoint, progress and
validation are checked, and which then shows transfer (features learned on half of the classes
help a small budget on the other half); an interrupted run resumed to the uninterrupted weights
(and lengthened by half an epoch); and the pieces the loop uses (schedule, recipes, in-memory
augmentation)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from samples import fashion_test_set, fashion_train_set

from resnet_serve.checkpoints import load_checkpoint
from resnet_serve.datasets import InMemoryDataset
from resnet_serve.errors import TrainingError, UnknownArchitectureError
from resnet_serve.progress import SilentReporter
from resnet_serve.training import (
    DEMO_TRAIN_CONFIG,
    RECIPES,
    TrainConfig,
    TrainResult,
    evaluate,
    learning_rate,
    recipe_config,
    train,
    train_on_folder,
    train_state_path,
)
from resnet_serve.training.distributed import World
from resnet_serve.training.loaders import train_batches, val_batches
from resnet_serve.training.preprocessing import run_preprocessing
from resnet_serve.training.splits import limited
from resnet_serve.training.transforms import BatchAugmentation

TINY = TrainConfig(architecture="resnet20", epochs=1, batch_size=64, lr=0.05, limit=512, num_threads=2, seed=3,
                   evaluate_each_epoch=False)


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
    train_set = fashion_train_set()
    test_set = fashion_test_set()
    small_test = InMemoryDataset(images=test_set.images[:500], labels=test_set.labels[:500],
                              class_names=test_set.class_names)
    return train_set, small_test


def classes_of(dataset: InMemoryDataset, classes: list[int], count: int | None = None) -> InMemoryDataset:
    """The images of ``classes`` (the first ``count``), relabelled 0.. in that order."""
    chosen = np.flatnonzero(np.isin(dataset.labels, classes))[:count]
    relabel = np.zeros(len(dataset.class_names), np.int64)
    relabel[classes] = np.arange(len(classes))
    return InMemoryDataset(images=dataset.images[chosen], labels=relabel[dataset.labels[chosen]],
                           class_names=[dataset.class_names[c] for c in classes])


FIRST_HALF, SECOND_HALF = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
# 32 steps of 128 images of T-shirt, trouser, pullover, dress and coat.
PRETRAIN = TrainConfig(epochs=1, batch_size=128, lr=0.2, limit=4096, num_threads=2, evaluate_each_epoch=False)


@pytest.fixture(scope="module")
def first_half(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, RecordingReporter]:
    """One run on the first half of the classes, recorded: the run the checkpoint test reads and
    the transfer test starts from (one run of training serves both)."""
    train_set, test_set = fashion_train_set(), fashion_test_set()
    reporter = RecordingReporter()
    result = train(config=PRETRAIN, train_set=classes_of(train_set, FIRST_HALF),
                   val_set=classes_of(test_set, FIRST_HALF, 300),
                   output=tmp_path_factory.mktemp("first-half") / "first-half.safetensors", reporter=reporter)
    return result, reporter


def test_a_run_writes_a_loadable_checkpoint_that_validates_as_it_reported(
    first_half: tuple[TrainResult, RecordingReporter],
) -> None:
    result, reporter = first_half
    assert result.epochs == 1 and len(result.history) == 1 and result.train_images == 4096
    # With 5 classes top-5 is always 100%: it is not reported.
    assert 0.2 < result.val_top1 <= 1.0 and result.val_top5 is None and np.isfinite(result.train_loss)
    advances = [fields for kind, fields in reporter.events if kind == "advance"]
    assert reporter.events[0] == ("start", ("epoch 1/1", 32)) and len(advances) == 32
    assert set(advances[-1]) == {"loss", "accuracy", "lr", "img/s"} and advances[-1]["img/s"] > 0
    assert any(kind == "message" and "val top-1" in text and "img/s" in text for kind, text in reporter.events)

    checkpoint = load_checkpoint(result.checkpoint)
    meta = checkpoint.meta
    assert meta.architecture == "resnet20" and meta.num_classes == 5 and meta.input_shape == (1, 28, 28)
    assert meta.class_names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert meta.metrics["test_accuracy"] == result.val_top1
    assert meta.training["limit"] == 4096 and meta.training["train_images"] == 4096
    # Mean and std come from the 4,096 training images the run saw: a stratified sample of the
    # 5 equal classes, 819 or 820 of each.
    seen = limited(classes_of(fashion_train_set(), FIRST_HALF), PRETRAIN)
    assert sorted(np.bincount(seen.labels).tolist()) == [819, 819, 819, 819, 820]
    pixels = seen.images / 255.0
    assert meta.preprocessing.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
    assert meta.preprocessing.std[0] == pytest.approx(pixels.std(), abs=1e-4)

    val_set = classes_of(fashion_test_set(), FIRST_HALF, 300)
    batches = val_batches(val_set, preprocessing=meta.preprocessing, world=World(), batch_size=128, workers=0)
    accuracy = evaluate(checkpoint.model, batches, num_classes=5)
    assert accuracy.images == 300 and accuracy.top1 == pytest.approx(result.val_top1)
    # The best checkpoint of a one-epoch run is its only one.
    assert result.best_checkpoint.is_file() and result.best_val_top1 == result.val_top1


def test_features_learned_on_half_the_classes_help_a_small_budget_on_the_other_half(
    first_half: tuple[TrainResult, RecordingReporter], tmp_path: Path
) -> None:
    # The same small budget (512 images of sandal, shirt, sneaker, bag and ankle boot, 2 epochs of
    # batch 32) from the first half's weights and from scratch, tested on 500 test images.
    train_set, test_set = fashion_train_set(), fashion_test_set()
    budget = TrainConfig(epochs=2, batch_size=32, lr=0.05, limit=512, num_threads=2, evaluate_each_epoch=False)
    runs = {
        start: train(config=budget, train_set=classes_of(train_set, SECOND_HALF),
                     val_set=classes_of(test_set, SECOND_HALF, 500), output=tmp_path / f"{start}.safetensors",
                     reporter=SilentReporter(), init_from=first_half[0].checkpoint if start == "fine-tuned" else None)
        for start in ("fine-tuned", "scratch")
    }
    # Measured with seeds 0-2 (pretraining and budget alike): fine-tuned 50-55%, scratch 33-37%,
    # margins of 13 to 18 points. The 5-point bar is below the least of them by 2.5 standard
    # errors of a difference of two accuracies on 500 images (√(2 × 0.25 / 500) ≈ 3.2 points).
    margin = runs["fine-tuned"].val_top1 - runs["scratch"].val_top1
    assert margin >= 0.05, {start: run.val_top1 for start, run in runs.items()}
    assert load_checkpoint(runs["fine-tuned"].checkpoint).meta.class_names == [
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert load_checkpoint(runs["fine-tuned"].checkpoint).meta.training["init_from"] == "first-half.safetensors"


def test_batch_augmentation_crops_and_flips_per_image() -> None:
    # mean 0, std 1: the output is the pixels / 255, so windows of the input can be found in it.
    batch = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    plain = BatchAugmentation(dataclasses.replace(TINY, pad=0, flip=False), size=(4, 4), mean=(0.0,), std=(1.0,))
    assert torch.equal(plain(batch), batch / 255.0)

    cropped = BatchAugmentation(dataclasses.replace(TINY, pad=1, flip=False), size=(4, 4), mean=(0.0,), std=(1.0,))
    padded = torch.nn.functional.pad(batch / 255.0, (1, 1, 1, 1), value=0.0)
    outs = [cropped(batch) for _ in range(8)]
    for out in outs:
        assert out.shape == batch.shape
        for n in range(2):
            windows = [padded[n, :, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
            assert any(torch.equal(out[n], window) for window in windows)
    assert len({out.numpy().tobytes() for out in outs}) > 1

    flipping = BatchAugmentation(dataclasses.replace(TINY, pad=0, flip=True), size=(4, 4), mean=(0.0,), std=(1.0,))
    flipped = flipping(batch.repeat(16, 1, 1, 1))
    expected = (batch / 255.0).repeat(16, 1, 1, 1)
    same = [torch.equal(image, expected[i]) for i, image in enumerate(flipped)]
    mirrored = [torch.equal(image, expected[i].flip(2)) for i, image in enumerate(flipped)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)


@pytest.mark.parametrize("flip", [False, True])
def test_no_flip_trains_on_unmirrored_images(flip: bool, datasets: tuple[InMemoryDataset, InMemoryDataset]) -> None:
    # What SGD sees in a pass of real Fashion-MNIST images, with crops off so that each image is
    # either one of the training images or its mirror.
    train_set, _ = datasets
    config = dataclasses.replace(TINY, limit=256, pad=0, flip=flip)
    seen = limited(train_set, config)
    preprocessing = run_preprocessing(config, seen, init=None)
    originals = torch.from_numpy(preprocessing.normalize(seen.images)).flatten(1)
    mirrors = torch.from_numpy(preprocessing.normalize(seen.images[:, :, ::-1].copy())).flatten(1)
    batches = train_batches(seen, config=config, preprocessing=preprocessing, world=World(), device=torch.device("cpu"))
    batches.set_epoch(1)
    images = torch.cat([inputs for inputs, _ in batches]).flatten(1)

    assert len(images) == 256
    # Normalising in torch (training) and in numpy (the serving contract) may round differently,
    # by an ulp of values below 3/0.35: 1e-5 is far below that bound's 1e-6 and a grey level's 0.011.
    close = 1e-5
    original = ((images[:, None] - originals[None]).abs().amax(2) < close).any(1)
    mirrored = ((images[:, None] - mirrors[None]).abs().amax(2) < close).any(1)
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
    rates = [learning_rate(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.02) and rates[9] == pytest.approx(0.2)
    assert max(rates) == pytest.approx(0.2) and rates[-1] < 1e-3
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))


def test_demo_config_is_the_full_fashion_mnist_recipe() -> None:
    assert DEMO_TRAIN_CONFIG.architecture == "resnet20" and DEMO_TRAIN_CONFIG.limit is None


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
    # crops, flips, Nesterov momentum and the EMA of the weights all carry state across the cut.
    config = dataclasses.replace(TINY, limit=128, epochs=2, schedule="step", milestones=(0.5,), ema_decay=0.9,
                                 evaluate_each_epoch=True, num_threads=1)
    whole = train(config=config, train_set=train_set, val_set=test_set, output=tmp_path / "whole.safetensors",
                  reporter=RecordingReporter())

    cut = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(config=config, train_set=train_set, val_set=test_set, output=cut, reporter=InterruptedReporter(2))
    assert load_checkpoint(cut).meta.training["step"] == 2 and train_state_path(cut).is_file()
    reporter = RecordingReporter()
    resumed = train(config=config, train_set=train_set, val_set=test_set, output=cut, reporter=reporter,
                    resume_from=cut)

    assert [value for kind, value in reporter.events if kind == "start"] == [("epoch 2/2", 2)]
    for name in ("checkpoint", "ema_checkpoint"):
        expected, actual = (load_checkpoint(getattr(run, name)).model.state_dict() for run in (whole, resumed))
        assert all(torch.allclose(expected[key].float(), actual[key].float(), atol=1e-6) for key in expected), name
    assert resumed.val_top1 == pytest.approx(whole.val_top1) and resumed.ema_val_top1 == pytest.approx(whole.ema_val_top1)
    assert [(s.epoch, s.train_loss, s.lr) for s in resumed.history] == [(s.epoch, s.train_loss, s.lr) for s in whole.history]
    assert [s.lr for s in whole.history] == pytest.approx([0.05, 0.005])

    # One CSV row per epoch, in the documented columns, and a PNG plot beside the checkpoint.
    rows = list(csv.DictReader(resumed.history_csv.open()))
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "val_top1", "val_top5", "ema_top1", "ema_top5",
                             "lr", "seconds", "images_per_second"]
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert float(rows[1]["val_top1"]) == pytest.approx(resumed.val_top1)
    assert float(rows[1]["ema_top1"]) == pytest.approx(resumed.ema_val_top1)
    assert resumed.history_csv.parent == cut.parent
    assert resumed.history_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config=config, train_set=train_set, val_set=test_set, output=cut, reporter=RecordingReporter(),
              resume_from=cut)
    with pytest.raises(TrainingError, match="lr=0.05"):
        train(config=dataclasses.replace(config, lr=0.1), train_set=train_set, val_set=test_set, output=cut,
              reporter=RecordingReporter(), resume_from=cut)
    others = InMemoryDataset(images=train_set.images[:1000][::-1].copy(), labels=train_set.labels[:1000][::-1].copy(),
                             class_names=train_set.class_names)
    with pytest.raises(TrainingError, match="other images"):
        train(config=config, train_set=others, val_set=test_set, output=cut, reporter=RecordingReporter(),
              resume_from=cut)

    # A finished run goes on when its epochs are raised, here by half an epoch: a fraction of an
    # epoch ends the schedule part-way through the last pass.
    reporter = RecordingReporter()
    longer = train(config=dataclasses.replace(config, epochs=2.5), train_set=train_set, val_set=test_set, output=cut,
                   reporter=reporter, resume_from=cut)
    assert [value for kind, value in reporter.events if kind == "start"] == [("epoch 3/3", 1)]
    assert sum(kind == "advance" for kind, _ in reporter.events) == 1
    assert [s.epoch for s in longer.history] == [1, 2, 3] and load_checkpoint(cut).meta.training["step"] == 5


def test_step_schedule_divides_by_ten_at_each_milestone() -> None:
    config = TrainConfig(lr=0.1, schedule="step", milestones=(0.5, 0.75), warmup=0.0)
    rates = [learning_rate(step, 100, config) for step in range(100)]
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
