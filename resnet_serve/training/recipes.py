"""What decides a training run (``TrainConfig``) and the named recipes that fill it in.

A config is data: it is stored in every checkpoint a run writes and compared field by field
when a run is resumed, so everything that changes the weights a run produces is a field here.
Fields that only change how fast the same weights come (threads, workers, device, evaluation)
are listed in ``RESUMABLE_CHANGES``; a resumed run may differ in them, and in ``epochs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from resnet_serve.errors import TrainingError
from resnet_serve.models import architecture_info
from resnet_serve.preprocessing import MAX_IMAGE_SIDE

__all__ = [
    "AMP_MODES",
    "AUTO_AUGMENTS",
    "CIFAR_TRAIN_CONFIG",
    "DEMO_TRAIN_CONFIG",
    "IMAGENET_TRAIN_CONFIG",
    "OPTIMIZERS",
    "RECIPES",
    "RESUMABLE_CHANGES",
    "SCHEDULES",
    "TRAINABLE",
    "TrainConfig",
    "recipe_config",
]

SCHEDULES = ("cosine", "constant", "step")
OPTIMIZERS = ("sgd", "adamw")
TRAINABLE = ("all", "last-stage", "head")
AUTO_AUGMENTS = ("none", "trivial", "rand")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# Fields that do not change the weights a run produces (or, for epochs, only lengthen the run),
# so a resumed run may differ in them.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "num_threads", "workers", "evaluate_each_epoch", "device", "amp", "sync_batchnorm"}
)


def _pair(name: str, value: object) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise TrainingError(f"{name} must be two numbers (low, high), got {value!r}") from None
    return low, high


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint it produces.

    Args:
        architecture: a registry name (``resnet20``, ``plain20``, ``resnet18``, ...).
        epochs: passes over the (possibly limited) training set; a fraction (2.5) ends the
            schedule part-way through the last pass. A resumed run may raise it.
        batch_size: images per SGD step over all processes (each of N processes takes
            batch_size / N), so a run keeps its schedule whatever the number of processes.
        optimizer: "sgd" (momentum, optionally Nesterov) or "adamw".
        lr: peak learning rate, reached at the end of warm-up.
        head_lr: peak learning rate of the classifier; None: ``lr``. Fine-tuning a pretrained
            backbone usually gives the fresh head a larger one.
        momentum, nesterov: SGD's.
        weight_decay: on convolution and linear weights; BatchNorm and biases are not decayed.
        schedule: "cosine" decays from the peak to zero; "constant" keeps the peak; "step"
            divides it by 10 at each of ``milestones``.
        milestones: fractions of all steps where the "step" schedule divides the rate by 10.
        warmup: fraction of all steps spent ramping linearly up to the peak.
        label_smoothing: cross-entropy target smoothing.
        clip_grad_norm: largest L2 norm of all gradients together; None: no clipping.
        ema_decay: keep an exponential moving average of the weights with this decay per step
            (evaluated each epoch and written as ``<name>.ema.safetensors``); None: none.
        trainable: "all", "last-stage" (the last stage and the head; the rest frozen, its
            BatchNorm statistics too) or "head" (a linear probe on frozen features).
        pad: in-memory sets (IDX, CIFAR): pad each side by this many pixels and crop back (0: off).
        flip: random horizontal flips (both kinds of data).
        crop_scale, crop_ratio: photos: random-resized crops covering this fraction of the
            image's area, with this range of aspect ratios (torchvision's defaults).
        auto_augment: photos: "trivial" (TrivialAugment) or "rand" (RandAugment, 2 ops at
            magnitude 9) after the crop and flip; "none".
        random_erase: probability of erasing a random rectangle of each image (0: off).
        image_size: photos: the square model input side; None: the --init checkpoint's, else
            the architecture's default.
        resize: photos: evaluation resizes the shorter side to this before the centre crop;
            None: the --init checkpoint's, else image_size / 0.875 (256 for 224).
        mean, std: per-channel normalisation; None: the --init checkpoint's, else ImageNet's
            for photos and measured on the training images for in-memory sets.
        val_split: the seeded, stratified fraction of an ImageFolder without ``val/`` held out
            for validation.
        limit: train on a seeded stratified sample of this many images (tiny runs, tests).
        seed: seeds initialisation, the order of images and every augmentation.
        workers: DataLoader worker processes decoding photos, per process; None: the usable
            cores divided among the processes of this machine.
        num_threads: torch CPU threads per process; None: the usable cores divided among the
            processes of this machine.
        zero_init_last: start every residual branch at zero (each block an identity), which
            speeds up the first epochs.
        channels_last: NHWC memory layout, markedly faster for oneDNN convolutions on CPU.
        evaluate_each_epoch: validate after every epoch (top-1, top-5), not only the last.
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when it is available (under
            torchrun, each process takes the GPU of its local rank).
        amp: mixed precision: "auto" (bfloat16 on CUDA, off on CPU), "bf16" (also on CPUs with
            bfloat16 instructions), "fp16" (CUDA, with a GradScaler) or "off".
        sync_batchnorm: with several processes, BatchNorm normalises over the whole global
            batch (SyncBatchNorm) instead of each process's share.
    """

    architecture: str = "resnet20"
    epochs: float = 3
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    head_lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    warmup: float = 0.05
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    ema_decay: float | None = None
    trainable: Literal["all", "last-stage", "head"] = "all"
    pad: int = 2
    flip: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    auto_augment: Literal["none", "trivial", "rand"] = "none"
    random_erase: float = 0.0
    image_size: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_split: float = 0.1
    limit: int | None = None
    seed: int = 0
    workers: int | None = None
    num_threads: int | None = None
    zero_init_last: bool = True
    channels_last: bool = True
    evaluate_each_epoch: bool = True
    device: str | None = None
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    sync_batchnorm: bool = False

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
        for name, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("trainable", self.trainable, TRAINABLE),
            ("auto_augment", self.auto_augment, AUTO_AUGMENTS),
            ("amp", self.amp, AMP_MODES),
        ):
            if value not in choices:
                raise TrainingError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        # JSON (a checkpoint's training record) gives lists; tuples keep the config hashable.
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if list(self.milestones) != sorted(self.milestones) or not all(0 < m < 1 for m in self.milestones):
            raise TrainingError(f"milestones must be increasing fractions in (0, 1), got {list(self.milestones)}")
        if not 0 <= self.warmup < 1:
            raise TrainingError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise TrainingError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("head_lr", "clip_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TrainingError(f"{name} must be > 0, got {value}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise TrainingError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        scale, ratio = _pair("crop_scale", self.crop_scale), _pair("crop_ratio", self.crop_ratio)
        object.__setattr__(self, "crop_scale", scale)
        object.__setattr__(self, "crop_ratio", ratio)
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise TrainingError(
                f"crop_scale must be 0 < low ≤ high ≤ 1 and crop_ratio 0 < low ≤ high, got {scale} and {ratio}"
            )
        if not 0 <= self.random_erase <= 1 or not 0 < self.val_split < 1:
            raise TrainingError(
                f"random_erase must be a probability and val_split a fraction in (0, 1), "
                f"got {self.random_erase} and {self.val_split}"
            )
        for name in ("image_size", "resize"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_IMAGE_SIDE:
                raise TrainingError(f"{name} must be 1..{MAX_IMAGE_SIDE} pixels, got {value}")
        if self.image_size is not None and self.resize is not None and self.resize < self.image_size:
            raise TrainingError(f"resize ({self.resize}) must be at least the image size ({self.image_size})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.std is not None and not all(s > 0 for s in self.std):
            raise TrainingError(f"std must be positive, got {list(self.std)}")
        if (self.workers is not None and self.workers < 0) or (self.num_threads is not None and self.num_threads < 1):
            raise TrainingError(f"workers must be ≥ 0 and num_threads ≥ 1, got {self.workers} and {self.num_threads}")

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
# label smoothing 0.1, zero-initialised last BatchNorm of each block; random-resized crops and
# flips on photos (padded crops stand in for them on in-memory sets).
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
        TrainingError: an unknown recipe or field, or a change that makes an impossible config.
    """
    if recipe not in RECIPES:
        raise TrainingError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    try:
        return replace(RECIPES[recipe], **{name: value for name, value in changes.items() if value is not None})
    except TypeError as exc:  # a field that TrainConfig does not have
        raise TrainingError(f"not a training option: {exc}") from None
