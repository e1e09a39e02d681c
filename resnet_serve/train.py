"""Training: SGD with warmup and a cosine or step learning-rate schedule, batched tensor
augmentation, named recipes (the demo's, the paper's CIFAR one, an ImageNet-style one), and runs
that resume exactly where they stopped."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from resnet_serve.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from resnet_serve.datasets import InMemoryDataset, load_dataset
from resnet_serve.errors import CheckpointError, DatasetError, TrainingError, first_line
from resnet_serve.files import replacing_atomically
from resnet_serve.models import architecture_info, create_model
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter

__all__ = [
    "CIFAR_TRAIN_CONFIG",
    "DEMO_TRAIN_CONFIG",
    "IMAGENET_TRAIN_CONFIG",
    "RECIPES",
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "make_optimizer",
    "recipe_config",
    "train",
    "train_on_folder",
    "train_state_path",
]

_SCHEDULES = ("cosine", "constant", "step")
# Config fields that do not change the weights a run produces, so a resumed run may differ in them.
_RESUMABLE_CHANGES = frozenset({"num_threads", "evaluate_each_epoch", "device", "amp"})
# The safetensors header key of a train state's JSON.
_STATE_KEY = "resnet_serve_train_state"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint it produces.

    Args:
        architecture: a registry name (``resnet20``, ``plain20``, ``resnet18``, ...).
        epochs: passes over the (possibly limited) training set; a fraction (2.5) ends the
            schedule part-way through the last pass.
        batch_size: images per SGD step.
        lr: peak learning rate, reached at the end of warmup.
        momentum, nesterov, weight_decay: SGD's; weight decay skips BatchNorm and biases.
        schedule: "cosine" decays from the peak to zero; "constant" keeps the peak; "step"
            divides it by 10 at each of ``milestones``.
        milestones: fractions of all steps where the "step" schedule divides the rate by 10.
        warmup: fraction of all steps spent ramping linearly up to the peak.
        label_smoothing: cross-entropy target smoothing.
        pad: random-crop augmentation: pad each side by this many pixels, crop back (0: off).
        flip: random horizontal flips.
        seed: seeds initialisation, shuffling and augmentation.
        num_threads: torch CPU threads (None: leave torch's default).
        zero_init_last: start every residual branch at zero (each block an identity), which
            speeds up the first epochs.
        channels_last: NHWC memory layout, markedly faster for oneDNN convolutions on CPU.
        limit: train on only the first ``limit`` images (tiny runs, tests).
        evaluate_each_epoch: measure test accuracy after every epoch, not only the last.
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when it is available.
        amp: bfloat16 autocast on CUDA (no loss scaling needed, unlike float16); off on CPU.
    """

    architecture: str = "resnet20"
    epochs: float = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    warmup: float = 0.05
    label_smoothing: float = 0.0
    pad: int = 2
    flip: bool = True
    seed: int = 0
    num_threads: int | None = None
    zero_init_last: bool = True
    channels_last: bool = True
    limit: int | None = None
    evaluate_each_epoch: bool = False
    device: str | None = None
    amp: bool = True

    def __post_init__(self) -> None:
        architecture_info(self.architecture)  # an unknown name fails before any data is read
        if not self.epochs > 0 or self.batch_size < 1 or not self.lr > 0:
            raise TrainingError(
                f"epochs and lr must be > 0 and batch_size ≥ 1, got epochs={self.epochs}, "
                f"lr={self.lr}, batch_size={self.batch_size}"
            )
        if self.weight_decay < 0 or (self.limit is not None and self.limit < 1):
            raise TrainingError(f"weight_decay must be ≥ 0 and limit ≥ 1, got {self.weight_decay} and {self.limit}")
        if self.pad < 0:
            raise TrainingError(f"pad must be ≥ 0 pixels (0 turns random crops off), got {self.pad}")
        if self.schedule not in _SCHEDULES:
            raise TrainingError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(_SCHEDULES)}")
        # JSON (a checkpoint's training record) gives a list; a tuple keeps the config hashable.
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if list(self.milestones) != sorted(self.milestones) or not all(0 < m < 1 for m in self.milestones):
            raise TrainingError(f"milestones must be increasing fractions in (0, 1), got {list(self.milestones)}")
        if not 0 <= self.warmup < 1:
            raise TrainingError(f"warmup must be a fraction in [0, 1), got {self.warmup}")

    def to_dict(self) -> dict:
        return asdict(self)


# The project demo: ResNet-20 on all 60,000 Fashion-MNIST images at native 28×28, sized for
# about six minutes on two CPU cores. Three epochs underfit rather than overfit, so random crops
# cost accuracy here (measured: 90.8% with pad=2); flips alone are kept. Batch 256 in
# channels-last ran ~20% faster per image than batch 128 (and NCHW ~40% slower).
DEMO_TRAIN_CONFIG = TrainConfig(
    architecture="resnet20",
    epochs=2.5,
    batch_size=256,
    lr=0.2,
    warmup=0.05,
    pad=0,
    flip=True,
    seed=0,
    num_threads=2,
    zero_init_last=True,
    channels_last=True,
)

# He et al. 2015, Sec. 4.2: 64k iterations of batch 128 (164 epochs of CIFAR-10's 50k images), SGD
# with momentum 0.9 and weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, 4-pixel
# padding with random crops and flips, no zero-init. Two deliberate deviations: weight decay skips
# BatchNorm and biases (as every recipe here), and the 400-iteration lr-0.01 warm-up the paper
# gave only ResNet-110 is left to ``warmup``.
CIFAR_TRAIN_CONFIG = TrainConfig(
    architecture="resnet20",
    epochs=164,
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    schedule="step",
    milestones=(0.5, 0.75),
    warmup=0.0,
    pad=4,
    flip=True,
    zero_init_last=False,
)

# The now-standard ImageNet recipe (Goyal et al. 2017; He et al. "Bag of Tricks" 2019): lr 0.1 per
# 256 images (scale it linearly with another batch size), 5 warm-up epochs then cosine decay,
# label smoothing 0.1, zero-initialised last BatchNorm of each block. RandomResizedCrop has no
# batched equivalent here; padded random crops and flips stand in for it.
IMAGENET_TRAIN_CONFIG = TrainConfig(
    architecture="resnet50",
    epochs=90,
    batch_size=256,
    lr=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    schedule="cosine",
    warmup=5 / 90,
    label_smoothing=0.1,
    pad=4,
    flip=True,
    zero_init_last=True,
)

RECIPES: dict[str, TrainConfig] = {
    "demo": DEMO_TRAIN_CONFIG,
    "cifar": CIFAR_TRAIN_CONFIG,
    "imagenet": IMAGENET_TRAIN_CONFIG,
}


def recipe_config(recipe: str, **changes: object) -> TrainConfig:
    """``RECIPES[recipe]`` with the fields named in ``changes`` replaced, except those given as
    None, which keep the recipe's value (an option left out means "the recipe's").

    Raises:
        TrainingError: an unknown recipe, or a change that makes an impossible config.
    """
    if recipe not in RECIPES:
        raise TrainingError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return replace(RECIPES[recipe], **{name: value for name, value in changes.items() if value is not None})


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    seconds: float
    test_accuracy: float | None = None
    lr: float = 0.0  # at the epoch's last step


@dataclass
class TrainResult:
    checkpoint: Path
    test_accuracy: float
    train_loss: float
    epochs: float
    seconds: float
    images_per_second: float
    history: list[EpochStats] = field(default_factory=list)
    history_csv: Path | None = None
    history_plot: Path | None = None


def _learning_rate(step: int, total: int, config: TrainConfig) -> float:
    warmup_steps = max(1, round(config.warmup * total))
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        passed = sum(step >= round(milestone * total) for milestone in config.milestones)
        return config.lr * 0.1**passed
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _augment(
    batch: torch.Tensor, *, pad: int, flip: bool, fill: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Random crop (after padding with ``fill``, the normalised black) and horizontal flip,
    for the whole N×C×H×W batch at once."""
    n, c, h, w = batch.shape
    if pad:
        padded = fill.view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
        padded[:, :, pad : pad + h, pad : pad + w] = batch
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        # Advanced indices around a slice put their dimensions first: this gives N×H×W×C,
        # whose permuted view is already channels-last in memory.
        batch = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(mask[:, None, None, None], batch.flip(3), batch)
    return batch


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD as ``config`` says, with weight decay on convolution and linear weights only."""
    # Decaying BatchNorm scales and biases only fights the normalisation; common practice skips them.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )


def evaluate(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 1000,
    channels_last: bool = True,
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode, on any device) on normalised N×C×H×W inputs."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].to(device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            predicted = model(batch).argmax(1).cpu()
            correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / max(1, len(inputs))


def train_state_path(checkpoint: Path) -> Path:
    """Where a run keeps what it needs to resume, beside its checkpoint."""
    return _beside(checkpoint, ".train-state.safetensors")


def _beside(checkpoint: Path, suffix: str) -> Path:
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + suffix)


def _device(config: TrainConfig) -> torch.device:
    if config.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise TrainingError(f"unknown device {config.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {config.device!r} asked for, but CUDA is not available")
    return device


@dataclass(frozen=True)
class _Tensors:
    """A run's images, normalised as the checkpoint will say, and what it records of them."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    test_inputs: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    preprocessing: Preprocessing
    fill: torch.Tensor  # black after normalisation, per channel: what crops pad with


def _prepare_tensors(config: TrainConfig, train_set: InMemoryDataset, test_set: InMemoryDataset) -> _Tensors:
    """Check that the sets match, keep the first ``config.limit`` training images, measure the
    preprocessing on them and normalise both sets with it."""
    if train_set.class_names != test_set.class_names:
        raise DatasetError("train and test sets have different class names")
    if train_set.images.shape[1:] != test_set.images.shape[1:]:
        raise DatasetError(
            f"train images are {train_set.images.shape[1:]}, test images {test_set.images.shape[1:]}"
        )
    images, labels = train_set.images, train_set.labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    if len(images) == 0:
        raise DatasetError("no training images")
    preprocessing = Preprocessing.for_dataset(
        InMemoryDataset(images=images, labels=labels, class_names=train_set.class_names)
    )
    return _Tensors(
        train_inputs=torch.from_numpy(preprocessing.normalize(images)),
        train_labels=torch.from_numpy(labels),
        test_inputs=torch.from_numpy(preprocessing.normalize(test_set.images)),
        test_labels=torch.from_numpy(test_set.labels),
        class_names=list(train_set.class_names),
        preprocessing=preprocessing,
        fill=torch.tensor([-m / s for m, s in zip(preprocessing.mean, preprocessing.std, strict=True)]),
    )


@dataclass(frozen=True)
class _Steps:
    """How a run's SGD steps fall into passes over the training images."""

    per_epoch: int
    total: int
    passes: int

    @classmethod
    def of(cls, config: TrainConfig, train_images: int) -> _Steps:
        # The last partial batch is dropped: a tiny batch gives BatchNorm noisy statistics.
        per_epoch = max(1, train_images // config.batch_size)
        total = max(1, round(per_epoch * config.epochs))
        return cls(per_epoch=per_epoch, total=total, passes=math.ceil(total / per_epoch))


@dataclass
class _Progress:
    """How far a run has come: all a resumed run needs beyond weights, momentum and RNG states."""

    step: int = 0
    images_seen: int = 0
    seconds: float = 0.0
    history: list[EpochStats] = field(default_factory=list)


@dataclass
class _Run:
    """What one training run works with; ``progress`` is what it has done."""

    config: TrainConfig
    tensors: _Tensors
    model: nn.Module
    optimizer: torch.optim.SGD
    generator: torch.Generator
    device: torch.device
    steps: _Steps
    progress: _Progress
    started: float  # time.perf_counter() when this process began the run

    @property
    def memory_format(self) -> torch.memory_format:
        return _memory_format(self.config)

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda" and self.config.amp

    def seconds(self) -> float:
        """Training time so far, over every process that worked on the run."""
        return self.progress.seconds + time.perf_counter() - self.started


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _start(
    config: TrainConfig,
    tensors: _Tensors,
    *,
    num_classes: int,
    device: torch.device,
    resume_from: Path | None,
    started: float,
) -> _Run:
    """Seed, build the model and optimizer, and put them where ``resume_from`` stopped if given."""
    torch.manual_seed(config.seed)
    model = create_model(
        config.architecture,
        num_classes=num_classes,
        in_channels=tensors.preprocessing.channels,
        zero_init_last=config.zero_init_last,
    )
    model = model.to(device=device, memory_format=_memory_format(config))
    run = _Run(
        config=config,
        tensors=tensors,
        model=model,
        optimizer=make_optimizer(model, config),
        generator=torch.Generator().manual_seed(config.seed),
        device=device,
        steps=_Steps.of(config, len(tensors.train_inputs)),
        progress=_Progress(),
        started=started,
    )
    if resume_from is not None:
        run.progress = _resume(Path(resume_from), run)
        if run.progress.step >= run.steps.total:
            raise TrainingError(f"{resume_from} has finished all {config.epochs} epochs; nothing to resume")
    return run


def _epoch_batches(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    config: TrainConfig,
    fill: torch.Tensor,
    generator: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """What SGD sees in one pass: ``steps`` shuffled batches, augmented as ``config`` says."""
    order = torch.randperm(len(inputs), generator=generator)
    for index in range(steps):
        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
        yield _augment(inputs[batch], pad=config.pad, flip=config.flip, fill=fill, generator=generator), labels[batch]


def _sgd_epoch(run: _Run, *, epoch: int, reporter: Reporter) -> EpochStats:
    """One pass of SGD (or what is left of the schedule); the running loss and accuracy over it."""
    config, model, optimizer, progress = run.config, run.model, run.optimizer, run.progress
    model.train()
    started = time.perf_counter()
    loss_sum = 0.0
    correct = 0
    seen = 0
    steps = min(run.steps.per_epoch, run.steps.total - progress.step)
    reporter.start(f"epoch {epoch}/{run.steps.passes}", total=steps)
    batches = _epoch_batches(
        run.tensors.train_inputs, run.tensors.train_labels, steps=steps, config=config,
        fill=run.tensors.fill, generator=run.generator,
    )
    for inputs, labels in batches:
        batch = inputs.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
        target = labels.to(run.device, non_blocking=True)
        lr = _learning_rate(progress.step, run.steps.total, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits = model(batch)
            loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        progress.step += 1
        seen += len(target)
        loss_sum += loss.item() * len(target)
        correct += int((logits.argmax(1) == target).sum())
        reporter.advance(1, loss=loss_sum / seen, accuracy=correct / seen, lr=lr)
    reporter.finish()
    progress.images_seen += seen
    return EpochStats(
        epoch=epoch,
        train_loss=loss_sum / seen,
        train_accuracy=correct / seen,
        seconds=time.perf_counter() - started,
        lr=lr,
    )


def _test_accuracy(run: _Run, *, reporter: Reporter) -> float:
    reporter.message(f"evaluating on {len(run.tensors.test_inputs)} test images")
    return evaluate(
        run.model, run.tensors.test_inputs, run.tensors.test_labels, channels_last=run.config.channels_last
    )


def _checkpoint_meta(run: _Run, stats: EpochStats, *, seconds: float) -> CheckpointMeta:
    metrics = {"train_loss": stats.train_loss}
    if stats.test_accuracy is not None:
        metrics["test_accuracy"] = stats.test_accuracy
    return CheckpointMeta(
        architecture=run.config.architecture,
        num_classes=len(run.tensors.class_names),
        in_channels=run.tensors.preprocessing.channels,
        class_names=run.tensors.class_names,
        preprocessing=run.tensors.preprocessing,
        metrics=metrics,
        training={
            **run.config.to_dict(),
            "train_images": len(run.tensors.train_inputs),
            "seconds": round(seconds, 1),
            "step": run.progress.step,
        },
    )


def _save(run: _Run, output: Path, stats: EpochStats) -> None:
    """The checkpoint of the weights so far, and beside it what a resume needs."""
    seconds = run.seconds()
    # The state goes first: a crash between the two writes leaves a checkpoint whose step
    # differs from its state's, which a resume detects rather than continuing wrongly.
    _save_train_state(train_state_path(output), run, seconds=seconds)
    save_checkpoint(output, model=run.model, meta=_checkpoint_meta(run, stats, seconds=seconds))


def _end_epoch(run: _Run, stats: EpochStats, *, output: Path, reporter: Reporter) -> None:
    run.progress.history.append(stats)
    reporter.message(
        f"epoch {stats.epoch}: loss {stats.train_loss:.4f}, train accuracy {stats.train_accuracy:.4f}"
        + (f", test accuracy {stats.test_accuracy:.4f}" if stats.test_accuracy is not None else "")
    )
    _save(run, output, stats)
    _write_history_csv(_beside(output, ".history.csv"), run.progress.history)


def _save_train_state(path: Path, run: _Run, *, seconds: float) -> None:
    tensors = {
        f"momentum.{name}": buffer.detach().cpu().contiguous()
        for name, param in run.model.named_parameters()
        if (buffer := run.optimizer.state.get(param, {}).get("momentum_buffer")) is not None
    }
    tensors["rng.shuffle"] = run.generator.get_state()
    # Nothing in today's loop draws from the global generator after initialisation; restoring it
    # keeps resumes exact for models that do (dropout, stochastic depth).
    tensors["rng.global"] = torch.get_rng_state()
    state = {
        "config": run.config.to_dict(),
        "train_images": len(run.tensors.train_inputs),
        "step": run.progress.step,
        "images_seen": run.progress.images_seen,
        "seconds": seconds,
        "history": [asdict(stats) for stats in run.progress.history],
    }
    # Atomic: a run killed while saving must leave the previous state to resume from.
    with replacing_atomically(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt", _STATE_KEY: json.dumps(state)})


def _resume(checkpoint_path: Path, run: _Run) -> _Progress:
    """Put the run's model, optimizer and generator back where the run saved in
    ``checkpoint_path`` stopped, after checking it is the same run on the same data."""
    checkpoint = load_checkpoint(checkpoint_path)
    state_path = train_state_path(checkpoint_path)
    try:
        with safe_open(str(state_path), framework="pt") as handle:
            state = json.loads((handle.metadata() or {})[_STATE_KEY])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: no such file; only runs of this version can be resumed") from None
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{state_path}: not a train state ({first_line(exc)})") from None

    # A JSON round trip gives the current config the saved one's types (lists, not tuples).
    current = json.loads(json.dumps(run.config.to_dict()))
    changed = [key for key in current if key not in _RESUMABLE_CHANGES and current[key] != state["config"].get(key)]
    if changed:
        was = ", ".join(f"{key}={state['config'].get(key)!r}" for key in changed)
        raise TrainingError(f"{checkpoint_path} was trained with {was}; resume it with the same settings")
    if checkpoint.meta.training.get("step") != state["step"]:
        raise TrainingError(f"{checkpoint_path} and {state_path.name} are from different steps of the run")
    if (
        checkpoint.meta.preprocessing != run.tensors.preprocessing
        or state["train_images"] != len(run.tensors.train_inputs)
    ):
        raise TrainingError(f"{checkpoint_path} was trained on other images than these")

    # Copies into the existing tensors keep their device and memory format.
    run.model.load_state_dict(checkpoint.model.state_dict())
    for name, param in run.model.named_parameters():
        if f"momentum.{name}" in tensors:
            run.optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(tensors[f"momentum.{name}"])
    run.generator.set_state(tensors["rng.shuffle"])
    torch.set_rng_state(tensors["rng.global"])
    return _Progress(
        step=state["step"],
        images_seen=state["images_seen"],
        seconds=state["seconds"],
        history=[EpochStats(**stats) for stats in state["history"]],
    )


_CSV_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_accuracy", "lr", "seconds")


def _write_history_csv(path: Path, history: list[EpochStats]) -> None:
    with replacing_atomically(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for stats in history:
            row = asdict(stats)
            writer.writerow({**row, "test_accuracy": "" if stats.test_accuracy is None else stats.test_accuracy})


def _plot_history(path: Path, history: list[EpochStats], *, title: str) -> None:
    # The object-oriented API touches no global pyplot state or GUI backend.
    from matplotlib.figure import Figure

    epochs = [stats.epoch for stats in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [stats.train_loss for stats in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="loss")
    accuracy_axes.plot(epochs, [100 * stats.train_accuracy for stats in history], marker="o", label="train")
    tested = [stats for stats in history if stats.test_accuracy is not None]
    accuracy_axes.plot(
        [stats.epoch for stats in tested], [100 * stats.test_accuracy for stats in tested], marker="s", label="test"
    )
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    accuracy_axes.legend()
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    with replacing_atomically(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")


def train(
    *,
    config: TrainConfig,
    train_set: InMemoryDataset,
    test_set: InMemoryDataset,
    output: Path,
    reporter: Reporter,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train ``config.architecture`` on ``train_set``, measure it on ``test_set`` and save a
    checkpoint at ``output`` that records everything needed to serve it.

    After every epoch the checkpoint is rewritten, with what the run needs to go on (momentum,
    RNG states, step) in ``train_state_path(output)`` and the epochs so far in a CSV beside it;
    a PNG plot of them follows at the end. ``resume_from`` (such a checkpoint) continues an
    interrupted run with the same config and data to the weights the uninterrupted run reaches.
    """
    device = _device(config)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    started = time.perf_counter()
    output = Path(output)
    tensors = _prepare_tensors(config, train_set, test_set)
    run = _start(
        config, tensors, num_classes=train_set.num_classes, device=device, resume_from=resume_from, started=started
    )
    for epoch in range(len(run.progress.history) + 1, run.steps.passes):
        stats = _sgd_epoch(run, epoch=epoch, reporter=reporter)
        if config.evaluate_each_epoch:
            stats.test_accuracy = _test_accuracy(run, reporter=reporter)
        _end_epoch(run, stats, output=output, reporter=reporter)
    # The last pass is always tested: its accuracy is the run's.
    stats = _sgd_epoch(run, epoch=run.steps.passes, reporter=reporter)
    test_accuracy = stats.test_accuracy = _test_accuracy(run, reporter=reporter)
    _end_epoch(run, stats, output=output, reporter=reporter)

    history = run.progress.history
    plot_path = _beside(output, ".history.png")
    _plot_history(plot_path, history, title=f"{config.architecture}, {len(tensors.train_inputs)} training images")
    return TrainResult(
        checkpoint=output,
        test_accuracy=test_accuracy,
        train_loss=stats.train_loss,
        epochs=config.epochs,
        seconds=run.seconds(),
        images_per_second=run.progress.images_seen / sum(s.seconds for s in history),
        history=history,
        history_csv=_beside(output, ".history.csv"),
        history_plot=plot_path,
    )


def train_on_folder(
    *,
    architecture: str = "resnet20",
    output: Path,
    data_dir: Path | None = None,
    recipe: str = "demo",
    epochs: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    limit: int | None = None,
    pad: int | None = None,
    flip: bool | None = None,
    seed: int = 0,
    amp: bool = True,
    resume_from: Path | None = None,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train with a named recipe (see ``RECIPES``), changed where an option is given (None keeps
    the recipe's), on an IDX folder (Fashion-MNIST when ``data_dir`` is None); ``resume_from``
    continues a stopped run."""
    config = recipe_config(
        recipe, architecture=architecture, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        limit=limit, pad=pad, flip=flip, seed=seed, amp=amp,
    )
    return train(
        config=config,
        train_set=load_dataset(data_dir, split="train").to_memory(),
        test_set=load_dataset(data_dir, split="test").to_memory(),
        output=output,
        reporter=reporter or SilentReporter(),
        resume_from=resume_from,
    )
