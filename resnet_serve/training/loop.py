"""The training loop: epochs of SGD or AdamW over the DataLoader's batches, validation (top-1,
top-5) after each, and a checkpoint that records everything needed to serve the weights.

One process or many: under torchrun each process trains on its share of every global batch in
``DistributedDataParallel`` (gradients averaged over all of them, optionally SyncBatchNorm);
only the first process (rank 0) writes files and reports progress. After every epoch it writes
the checkpoint (``<name>.safetensors``), the best one so far (``<name>.best.safetensors``), the
EMA of the weights if kept (``<name>.ema.safetensors``), the state a resume needs, and the
history; a plot follows at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnet_serve.checkpoints import read_checkpoint_meta
from resnet_serve.datasets import Dataset, ImageFolder
from resnet_serve.errors import DatasetError, TrainingError
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.training.distributed import all_sum, joined, peers_watched, world_from_environment
from resnet_serve.training.loaders import train_batches
from resnet_serve.training.optim import lr_factor, set_learning_rate
from resnet_serve.training.outputs import save_run
from resnet_serve.training.preprocessing import run_preprocessing
from resnet_serve.training.recipes import TrainConfig, recipe_config
from resnet_serve.training.run import Run, Steps, run_device, run_threads, start_run
from resnet_serve.training.splits import limited, load_splits
from resnet_serve.training.state import EpochStats, beside, plot_history, write_history_csv
from resnet_serve.training.validation import validate
from resnet_serve.training.weights import set_train_mode

__all__ = ["TrainResult", "train", "train_on_folder"]


@dataclass
class TrainResult:
    checkpoint: Path
    val_top1: float
    val_top5: float | None
    train_loss: float
    epochs: float
    seconds: float
    images_per_second: float
    train_images: int
    val_images: int
    processes: int
    best_checkpoint: Path
    best_val_top1: float
    ema_checkpoint: Path | None = None
    ema_val_top1: float | None = None
    history: list[EpochStats] = field(default_factory=list)
    history_csv: Path | None = None
    history_plot: Path | None = None


def _train_epoch(
    run: Run, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, epoch: int, reporter: Reporter
) -> EpochStats:
    """One pass (or what is left of the schedule) over this process's share of the batches;
    the loss and accuracy over every process's."""
    config, optimizer, state = run.config, run.optimizer, run.state
    run.trained.train()
    set_train_mode(run.model, config.trainable)
    steps = min(run.steps.per_epoch, run.steps.total - state.step)
    reporter.start(f"epoch {epoch}/{run.steps.passes}", total=steps)
    started = time.perf_counter()
    loss_sum = 0.0
    correct = seen = 0
    lr = 0.0
    for step, (inputs, target) in enumerate(batches):
        if step == steps:
            break
        factor = lr_factor(state.step, run.steps.total, config)
        set_learning_rate(optimizer, factor)
        lr = config.lr * factor
        with torch.autocast(run.device.type, dtype=run.autocast or torch.float32, enabled=run.autocast is not None):
            logits = run.trained(inputs)
            loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if config.clip_grad_norm is not None:
            run.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_grad_norm)
        run.scaler.step(optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update_parameters(run.model)

        state.step += 1
        seen += len(target)
        loss_sum += loss.item() * len(target)
        correct += int((logits.argmax(1) == target).sum())
        elapsed = time.perf_counter() - started
        reporter.advance(
            1, loss=loss_sum / seen, accuracy=correct / seen, lr=lr,
            **{"img/s": seen * run.world.world_size / elapsed},
        )
    reporter.finish()
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = all_sum([loss_sum, correct, seen], world=run.world, device=run.device)
    state.images_seen += int(seen)
    return EpochStats(
        epoch=epoch, train_loss=loss_sum / seen, train_accuracy=correct / seen, seconds=seconds,
        images_per_second=seen / seconds, lr=lr,
    )


def _epoch_line(stats: EpochStats) -> str:
    line = f"epoch {stats.epoch}: loss {stats.train_loss:.4f}, train top-1 {stats.train_accuracy:.2%}"
    if stats.val_top1 is not None:
        line += f", val top-1 {stats.val_top1:.2%}"
        line += f", top-5 {stats.val_top5:.2%}" if stats.val_top5 is not None else ""
    if stats.ema_top1 is not None:
        line += f", EMA top-1 {stats.ema_top1:.2%}"
    return line + f", {stats.images_per_second:.0f} img/s"


def train(
    *,
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset,
    output: Path,
    reporter: Reporter,
    resume_from: Path | None = None,
    init_from: Path | None = None,
) -> TrainResult:
    """Train ``config.architecture`` on ``train_set``, validate on ``val_set`` and save a
    checkpoint at ``output`` that records everything needed to serve it.

    Both sets may be in memory (IDX, CIFAR) or folders of photos, of the same classes.
    ``init_from`` (any resnet-serve checkpoint) gives the starting weights, its normalisation
    and (for photos) its evaluation preprocessing, unless ``config`` overrides them;
    ``resume_from`` (a checkpoint this function wrote) continues its run, to the weights the
    uninterrupted run reaches, with any number of processes and more epochs if ``config``
    says so. Under torchrun, every process calls this and trains on its share.
    """
    world = world_from_environment()
    device = run_device(config, world)
    torch.set_num_threads(run_threads(config, world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    reporter = reporter if world.main else SilentReporter()
    started = time.perf_counter()
    output = Path(output)
    if list(train_set.class_names) != list(val_set.class_names):
        raise DatasetError("the training and validation sets have different class names")
    if isinstance(train_set, ImageFolder) != isinstance(val_set, ImageFolder):
        raise DatasetError("the training and validation sets must both be folders of photos, or both in memory")
    train_set = limited(train_set, config)
    steps = Steps.of(config, len(train_set))
    init = read_checkpoint_meta(init_from) if init_from is not None and resume_from is None else None
    preprocessing = run_preprocessing(config, train_set, init=init)
    with joined(world, device=device), peers_watched(world):
        run = start_run(
            config, train_set=train_set, world=world, device=device, preprocessing=preprocessing,
            class_names=list(train_set.class_names), init_from=init_from, resume_from=resume_from, steps=steps,
            started=started,
        )
        batches = train_batches(
            train_set, config=config, preprocessing=run.meta.preprocessing, world=world, device=device
        )
        state = run.state
        first = len(state.history) + 1
        for epoch in range(first, run.steps.passes + 1):
            batches.set_epoch(epoch)
            stats = _train_epoch(run, batches, epoch=epoch, reporter=reporter)
            if config.evaluate_each_epoch or epoch == run.steps.passes:
                validate(run, stats, val_set, reporter=reporter)
            best = stats.val_top1 is not None and (state.best_top1 is None or stats.val_top1 > state.best_top1)
            if best:
                state.best_top1 = stats.val_top1
            state.history.append(stats)
            reporter.message(_epoch_line(stats))
            if world.main:
                save_run(run, output, stats, best=best)
                write_history_csv(beside(output, ".history.csv"), state.history)
    history = state.history
    plot = beside(output, ".history.png")
    if world.main:
        plot_history(plot, history, title=f"{config.architecture}, {len(train_set)} training images")
    last = history[-1]
    return TrainResult(
        checkpoint=output,
        val_top1=last.val_top1,  # type: ignore[arg-type]  # the last pass is always validated
        val_top5=last.val_top5,
        train_loss=last.train_loss,
        epochs=config.epochs,
        seconds=run.seconds(),
        images_per_second=state.images_seen / sum(s.seconds for s in history),
        train_images=len(train_set),
        val_images=len(val_set),
        processes=world.world_size,
        best_checkpoint=beside(output, ".best.safetensors"),
        best_val_top1=state.best_top1,  # type: ignore[arg-type]
        ema_checkpoint=beside(output, ".ema.safetensors") if run.ema is not None else None,
        ema_val_top1=last.ema_top1,
        history=history,
        history_csv=beside(output, ".history.csv"),
        history_plot=plot,
    )


def train_on_folder(
    *,
    output: Path,
    data_dir: Path | None = None,
    recipe: str = "demo",
    init_from: Path | None = None,
    resume_from: Path | None = None,
    reporter: Reporter | None = None,
    **changes: object,
) -> TrainResult:
    """Train with a named recipe (see ``RECIPES``), each ``TrainConfig`` field given in
    ``changes`` replaced (None keeps the recipe's), on the data at ``data_dir`` (Fashion-MNIST
    when None): an IDX folder, a CIFAR archive or folder, or an ImageFolder tree of photos,
    split as ``load_splits`` says. With ``init_from`` and no architecture, the checkpoint's.
    """
    if init_from is not None and changes.get("architecture") is None and resume_from is None:
        changes["architecture"] = read_checkpoint_meta(init_from).architecture
    config = recipe_config(recipe, **changes)
    splits = load_splits(data_dir, config=config)
    if isinstance(splits.train, ImageFolder) and changes.get("pad") is not None:
        raise TrainingError(
            "pad applies to in-memory IDX and CIFAR images; photos are cropped by crop_scale and crop_ratio"
        )
    return train(
        config=config, train_set=splits.train, val_set=splits.val, output=output,
        reporter=reporter or SilentReporter(), resume_from=resume_from, init_from=init_from,
    )
