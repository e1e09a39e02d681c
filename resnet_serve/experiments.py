"""The paper's two arguments for shortcuts, re-run: deeper plain nets train worse than shallower
ones while deeper ResNets do not (the degradation problem, He et al. 2015, Fig. 6), and how the
gradient reaching each block differs with and without shortcuts."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnet_serve.datasets import InMemoryDataset, load_dataset
from resnet_serve.errors import TrainingError
from resnet_serve.files import replacing_atomically
from resnet_serve.models import create_model
from resnet_serve.models.blocks import BasicBlock, Bottleneck
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter
from resnet_serve.training import make_optimizer, recipe_config, train

__all__ = [
    "DegradationResult",
    "DegradationRun",
    "GradientProfile",
    "GradientResult",
    "run_degradation",
    "run_gradients",
]


def _architecture(depth: int, residual: bool) -> str:
    return f"{'resnet' if residual else 'plain'}{depth}"


@dataclass
class DegradationRun:
    """One net's curves: errors are fractions, one per epoch; training error is the running
    error over each epoch's augmented batches, as the paper's thin curves are."""

    architecture: str
    depth: int
    residual: bool
    train_error: list[float]
    test_error: list[float]
    checkpoint: Path
    seconds: float


@dataclass
class DegradationResult:
    runs: list[DegradationRun]
    epochs: float
    train_images: int
    test_images: int
    csv: Path
    plot: Path
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# The CPU-sized run: 4 nets × 5 epochs × 10,000 images plus 2,000 test images per epoch.
_CPU_EPOCHS, _CPU_LIMIT, _CPU_TEST_LIMIT = 5.0, 10_000, 2_000


def run_degradation(
    *,
    depths: Sequence[int] = (20, 56),
    epochs: float | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    full: bool = False,
    recipe: str = "cifar",
    pad: int | None = None,
    flip: bool | None = None,
    data_dir: Path | None = None,
    seed: int = 0,
    output_dir: Path,
    reporter: Reporter,
) -> DegradationResult:
    """Train plain-N and ResNet-N for each depth with the same recipe, seed and data, and plot
    training and test error per epoch like the paper's Figure 6.

    ``epochs``, ``limit`` (training images) and ``test_limit`` default to a CPU-sized run: 5
    epochs on the first 10,000 training images, tested on 2,000; with ``full``, to the recipe's
    whole schedule on every image. ``pad`` and ``flip`` change the recipe's augmentation (None
    keeps it).

    Writes ``<architecture>.safetensors`` (with its own history CSV and plot) per net, then
    ``degradation.csv`` (one row per net and epoch) and ``degradation.png`` into ``output_dir``.
    """
    began = time.perf_counter()
    if test_limit is not None and test_limit < 1:
        # A count, never a slice: -1 would silently drop the last test image.
        raise TrainingError(f"test_limit must be ≥ 1, got {test_limit}")
    if epochs is None:
        epochs = recipe_config(recipe).epochs if full else _CPU_EPOCHS
    if not full:
        limit = _CPU_LIMIT if limit is None else limit
        test_limit = _CPU_TEST_LIMIT if test_limit is None else test_limit
    # Every config is built (and so validated) before the first net trains.
    configs = [
        (depth, residual, recipe_config(
            recipe, architecture=_architecture(depth, residual), epochs=epochs, limit=limit, pad=pad, flip=flip,
            seed=seed, evaluate_each_epoch=True,
        ))
        for depth in depths
        for residual in (False, True)
    ]
    train_set = load_dataset(data_dir, split="train").to_memory()
    test_set = load_dataset(data_dir, split="test").to_memory()
    if test_limit is not None:
        test_set = InMemoryDataset(
            images=test_set.images[:test_limit], labels=test_set.labels[:test_limit],
            class_names=test_set.class_names,
        )
    output_dir.mkdir(parents=True, exist_ok=True)

    runs = []
    for index, (depth, residual, config) in enumerate(configs, start=1):
        reporter.message(f"training {config.architecture} ({index}/{len(configs)})")
        result = train(
            config=config, train_set=train_set, val_set=test_set,
            output=output_dir / f"{config.architecture}.safetensors", reporter=reporter,
        )
        runs.append(
            DegradationRun(
                architecture=config.architecture,
                depth=depth,
                residual=residual,
                train_error=[1 - stats.train_accuracy for stats in result.history],
                test_error=[1 - stats.val_top1 for stats in result.history if stats.val_top1 is not None],
                checkpoint=result.checkpoint,
                seconds=result.seconds,
            )
        )

    csv_path = output_dir / "degradation.csv"
    with replacing_atomically(csv_path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["architecture", "depth", "residual", "epoch", "train_error", "test_error"])
        for run in runs:
            errors = zip(run.train_error, run.test_error, strict=True)
            for epoch, (train_error, test_error) in enumerate(errors, start=1):
                writer.writerow([run.architecture, run.depth, run.residual, epoch, train_error, test_error])
    plot_path = output_dir / "degradation.png"
    _plot_degradation(plot_path, runs)
    return DegradationResult(
        runs=runs,
        epochs=epochs,
        train_images=min(len(train_set), limit or len(train_set)),
        test_images=len(test_set),
        csv=csv_path,
        plot=plot_path,
        seconds=time.perf_counter() - began,
    )


def _plot_degradation(path: Path, runs: list[DegradationRun]) -> None:
    # The object-oriented API touches no global pyplot state or GUI backend.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    colours = {depth: f"C{i}" for i, depth in enumerate(sorted({run.depth for run in runs}))}
    for axes, residual in zip(panels, (False, True), strict=True):
        for run in (run for run in runs if run.residual == residual):
            epochs = range(1, len(run.train_error) + 1)
            name = f"{'ResNet' if residual else 'plain'}-{run.depth}"
            # The paper's convention: dashed training error, bold test error.
            axes.plot(epochs, [100 * e for e in run.train_error], "--", color=colours[run.depth], alpha=0.8)
            axes.plot(epochs, [100 * e for e in run.test_error], "-", color=colours[run.depth], linewidth=2, label=name)
        axes.set(xlabel="epoch", title="ResNets" if residual else "plain nets")
        axes.grid(alpha=0.3)
        axes.legend(title="bold: test, dashed: train")
    panels[0].set_ylabel("error (%)")
    with replacing_atomically(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")


@dataclass
class GradientProfile:
    """Per block (first first), the L2 norm of the loss gradient at the block's input on a
    fixed probe batch, at initialisation and after ``steps`` SGD steps; and the loss per step."""

    architecture: str
    depth: int
    residual: bool
    at_init: list[float]
    after_steps: list[float]
    losses: list[float]


@dataclass
class GradientResult:
    profiles: list[GradientProfile]
    steps: int
    batch_size: int
    json: Path
    plot: Path
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _block_input_gradient_norms(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """One forward and backward pass in training mode; the gradient norm at each block's input."""
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    norms: list[float] = [float("nan")] * len(blocks)

    def watch(index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            args[0].register_hook(lambda grad: norms.__setitem__(index, float(grad.norm())))

        return hook

    handles = [block.register_forward_pre_hook(watch(index)) for index, block in enumerate(blocks)]
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        model.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    return norms


def run_gradients(
    *,
    depths: Sequence[int] = (20, 56, 110),
    steps: int = 20,
    batch_size: int = 128,
    recipe: str = "cifar",
    data_dir: Path | None = None,
    seed: int = 0,
    output_dir: Path,
    reporter: Reporter,
) -> GradientResult:
    """Measure the gradient reaching each block of plain and residual nets of each depth, at
    initialisation and after ``steps`` SGD steps of ``recipe`` at its peak learning rate.

    Every net starts from the same seed and sees the same batches; the probe batch (the first
    ``batch_size`` training images) is measured in training mode, as SGD sees it. Writes
    ``gradients.json`` and ``gradients.png`` (one figure, a panel per moment) to ``output_dir``.
    """
    if steps < 0 or batch_size < 1:
        raise TrainingError(f"steps must be ≥ 0 and batch_size ≥ 1, got {steps} and {batch_size}")
    began = time.perf_counter()
    configs = [
        (depth, residual, recipe_config(
            recipe, architecture=_architecture(depth, residual), batch_size=batch_size, seed=seed
        ))
        for depth in depths
        for residual in (False, True)
    ]
    train_set = load_dataset(data_dir, split="train").to_memory()
    # The probe batch, then one batch per step.
    count = min(len(train_set), batch_size * (steps + 1))
    preprocessing = Preprocessing.for_dataset(
        InMemoryDataset(
            images=train_set.images[:count], labels=train_set.labels[:count], class_names=train_set.class_names
        )
    )
    inputs = torch.from_numpy(preprocessing.normalize(train_set.images[:count]))
    labels = torch.from_numpy(train_set.labels[:count])
    probe_inputs, probe_labels = inputs[:batch_size], labels[:batch_size]
    output_dir.mkdir(parents=True, exist_ok=True)

    profiles = []
    for depth, residual, config in configs:
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = create_model(
            config.architecture, num_classes=train_set.num_classes, in_channels=preprocessing.channels,
            zero_init_last=config.zero_init_last,
        )
        at_init = _block_input_gradient_norms(model, probe_inputs, probe_labels)
        optimizer = make_optimizer(model, config)
        losses = []
        reporter.start(f"{config.architecture}: {steps} SGD steps", total=steps)
        for _ in range(steps):
            batch = torch.randint(0, count, (batch_size,), generator=generator)
            loss = F.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            reporter.advance(1, loss=losses[-1])
        reporter.finish()
        after_steps = _block_input_gradient_norms(model, probe_inputs, probe_labels)
        profiles.append(
            GradientProfile(
                architecture=config.architecture,
                depth=depth,
                residual=residual,
                at_init=at_init,
                after_steps=after_steps,
                losses=losses,
            )
        )
        reporter.message(
            f"{config.architecture}: first/last block gradient norm {at_init[0] / at_init[-1]:.3g} at init, "
            f"{after_steps[0] / after_steps[-1]:.3g} after {steps} steps"
        )

    result = GradientResult(
        profiles=profiles, steps=steps, batch_size=batch_size, json=output_dir / "gradients.json",
        plot=output_dir / "gradients.png", seconds=time.perf_counter() - began,
    )
    with replacing_atomically(result.json) as temporary:
        temporary.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    _plot_gradients(result.plot, profiles, steps=steps)
    return result


def _plot_gradients(path: Path, profiles: list[GradientProfile], *, steps: int) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    colours = {depth: f"C{i}" for i, depth in enumerate(sorted({p.depth for p in profiles}))}
    moments = (("at_init", "at initialisation"), ("after_steps", f"after {steps} SGD steps"))
    for axes, (moment, title) in zip(panels, moments, strict=True):
        for profile in profiles:
            norms = getattr(profile, moment)
            axes.plot(
                range(1, len(norms) + 1), norms, "-" if profile.residual else "--", color=colours[profile.depth],
                label=f"{'ResNet' if profile.residual else 'plain'}-{profile.depth}",
            )
        axes.set(xlabel="block (input side first)", yscale="log", title=title)
        axes.grid(alpha=0.3, which="both")
        axes.legend()
    panels[0].set_ylabel("‖∂loss/∂block input‖")
    with replacing_atomically(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
