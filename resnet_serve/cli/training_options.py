"""The options of `train`, in three bundles (see ``options.bundled``): how the weights are
optimised, how the images are augmented and prepared, and which processes and devices do it.

Each bundle gives the ``TrainConfig`` fields it changes (``changes``), under the config's own
names; an option left out is None there, which keeps the recipe's value.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import typer

from resnet_serve.cli.options import FlipOption, OptionBundle, PadOption

__all__ = ["Augmentation", "Optimization", "Processes", "given_options"]


def _floats(text: str | None, *, option: str, count: int | None = None) -> tuple[float, ...] | None:
    """Comma-separated numbers ("0.485,0.456,0.406") as a tuple; None for an option not given."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or (count is not None and len(values) != count):
        wanted = f"{count} comma-separated numbers" if count else "comma-separated numbers"
        raise typer.BadParameter(f"expected {wanted}, got {text!r}", param_hint=option)
    return values


@dataclasses.dataclass(frozen=True)
class Optimization(OptionBundle):
    """The optimizer, its schedule, and what trains."""

    opt: Annotated[Literal["sgd", "adamw"] | None, typer.Option("--opt", help="Optimizer.")] = None
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None
    head_lr: Annotated[float | None, typer.Option(
        help="Peak learning rate of the classifier (default: --lr)."
    )] = None
    momentum: Annotated[float | None, typer.Option(help="SGD momentum.")] = None
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (not on BatchNorm and biases).")] = None
    schedule: Annotated[Literal["cosine", "step", "constant"] | None, typer.Option(
        help="Learning-rate schedule after warm-up."
    )] = None
    warmup: Annotated[float | None, typer.Option(
        help="Fraction of all steps spent ramping the rate up linearly."
    )] = None
    milestones: Annotated[str | None, typer.Option(
        help="step schedule: fractions of all steps where the rate drops 10×, e.g. 0.5,0.75."
    )] = None
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the cross-entropy.")] = None
    clip_grad_norm: Annotated[float | None, typer.Option(help="Clip the gradients' total L2 norm to this.")] = None
    ema_decay: Annotated[float | None, typer.Option(
        help="Keep an exponential moving average of the weights with this decay per step (e.g. 0.999): validated "
        "each epoch, written as <name>.ema.safetensors."
    )] = None
    trainable: Annotated[Literal["all", "last-stage", "head"] | None, typer.Option(
        help="What trains: all, the last stage and the head, or the head only (the rest frozen, BatchNorm "
        "statistics too)."
    )] = None

    def changes(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["optimizer"] = fields.pop("opt")
        fields["milestones"] = _floats(self.milestones, option="--milestones")
        return fields


@dataclasses.dataclass(frozen=True)
class Augmentation(OptionBundle):
    """How training images are augmented, and how photos are prepared for the model."""

    pad: PadOption = None
    flip: FlipOption = None
    crop_scale: Annotated[str | None, typer.Option(
        help="Photos: random-resized crops cover this range of the image's area (default 0.08,1)."
    )] = None
    crop_ratio: Annotated[str | None, typer.Option(
        help="Photos: aspect-ratio range of the crops (default 0.75,1.333)."
    )] = None
    auto_augment: Annotated[Literal["none", "trivial", "rand"] | None, typer.Option(
        help="Photos: TrivialAugment or RandAugment after crop and flip."
    )] = None
    random_erase: Annotated[float | None, typer.Option(
        help="Probability of erasing a random rectangle of each image."
    )] = None
    image_size: Annotated[int | None, typer.Option(
        help="Photos: model input side (default: --init's, else the architecture's)."
    )] = None
    resize: Annotated[int | None, typer.Option(
        help="Photos: shorter side before the evaluation centre crop (default: --init's, else image-size / 0.875)."
    )] = None
    mean: Annotated[str | None, typer.Option(
        help="Per-channel mean, comma-separated (default: --init's; else ImageNet's for photos, measured for "
        "IDX/CIFAR)."
    )] = None
    std: Annotated[str | None, typer.Option(help="Per-channel std, comma-separated (defaults as --mean).")] = None

    def changes(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "crop_scale": _floats(self.crop_scale, option="--crop-scale", count=2),
            "crop_ratio": _floats(self.crop_ratio, option="--crop-ratio", count=2),
            "mean": _floats(self.mean, option="--mean"),
            "std": _floats(self.std, option="--std"),
        }


@dataclasses.dataclass(frozen=True)
class Processes(OptionBundle):
    """Which processes, threads and devices train, and in what precision."""

    workers: Annotated[int | None, typer.Option(
        help="Photo-decoding DataLoader processes per training process (default: the usable cores, divided "
        "among the processes)."
    )] = None
    threads: Annotated[int | None, typer.Option(
        help="torch CPU threads per process (default: the usable cores, divided among the processes)."
    )] = None
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda, cuda:1, ... (default: CUDA when available; under torchrun each process takes its local "
        "rank's GPU)."
    )] = None
    amp: Annotated[Literal["auto", "bf16", "fp16", "off"] | None, typer.Option(
        help="Mixed precision: auto (bfloat16 on CUDA, off on CPU), bf16 (also on CPUs with bfloat16 "
        "instructions), fp16 (CUDA, with loss scaling), off."
    )] = None
    sync_bn: Annotated[bool, typer.Option(
        "--sync-bn", help="Several processes: BatchNorm over the whole global batch (SyncBatchNorm)."
    )] = False
    validate_each_epoch: Annotated[bool | None, typer.Option(
        "--validate-each-epoch/--validate-at-end", help="Validate after every epoch (the default), or only after the "
        "last."
    )] = None
    nproc: Annotated[int | None, typer.Option(
        help="Start N training processes on this machine through torchrun's launcher (gloo on CPU, NCCL on "
        "GPUs); see docs/training.md for several machines."
    )] = None

    def changes(self) -> dict[str, Any]:
        return {
            "workers": self.workers, "num_threads": self.threads, "device": self.device, "amp": self.amp,
            "sync_batchnorm": self.sync_bn or None, "evaluate_each_epoch": self.validate_each_epoch,
        }


def given_options(ctx: typer.Context, *, without: set[str]) -> list[str]:
    """The command and the options it was given (those that differ from their defaults) as a
    command line again, for starting the same command in other processes."""
    arguments = [ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params[param.name]  # type: ignore[index]
        if param.name in without or value == param.default:
            continue
        if param.param_type_name != "option":
            arguments.append(str(value))
        elif getattr(param, "is_flag", False):
            arguments.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for item in value if param.multiple else [value]:
                arguments += [param.opts[0], *(map(str, item) if isinstance(item, tuple) else [str(item)])]
    return arguments
