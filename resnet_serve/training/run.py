"""What one process of a training run works with, and how it gets it: the device, the
precision autocast computes in, the model (fresh or from ``--init``, synchronised BatchNorm
and DDP-wrapped with several processes), the optimizer, the loss scaler and the EMA, all put
where an interrupted run stopped when it is resumed.

A resume checks that nothing which changes the weights differs from the interrupted run (see
``recipes.RESUMABLE_CHANGES``) and that it trains on the same images; the number of processes
may differ, since every global batch is the same whatever the world size.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnet_serve.checkpoints import CheckpointMeta, load_checkpoint
from resnet_serve.datasets import Dataset
from resnet_serve.errors import TrainingError
from resnet_serve.machine import cpu_flags
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.training.distributed import World, cores_per_process, synchronized_batchnorm
from resnet_serve.training.optim import make_optimizer
from resnet_serve.training.recipes import RESUMABLE_CHANGES, TrainConfig
from resnet_serve.training.state import TrainState, data_fingerprint, load_train_state, train_state_path
from resnet_serve.training.weights import build_model

__all__ = ["Run", "Steps", "cpu_has_bfloat16", "run_device", "run_threads", "start_run"]

# The CPU features that give autocast bfloat16 kernels (oneDNN's AVX-512 BF16 and AMX).
_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def run_device(config: TrainConfig, world: World) -> torch.device:
    if config.device is None:
        return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise TrainingError(f"unknown device {config.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {config.device!r} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank)
    return device


def cpu_has_bfloat16() -> bool:
    return bool(_BFLOAT16_FLAGS & set(cpu_flags()))


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in, or None for float32 throughout."""
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp == "fp16":
        if device.type != "cuda":
            raise TrainingError("amp fp16 needs a CUDA GPU; on the CPU use bf16 (where the CPU has it) or off")
        return torch.float16
    if device.type == "cpu" and not cpu_has_bfloat16():
        raise TrainingError(
            "amp bf16 on the CPU needs bfloat16 instructions (avx512_bf16 or amx_bf16), which this CPU lacks; use off"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("this GPU has no bfloat16; use amp fp16")
    return torch.bfloat16


def run_threads(config: TrainConfig, world: World) -> int:
    return config.num_threads or cores_per_process(world)


@dataclass(frozen=True)
class Steps:
    """How a run's optimizer steps fall into passes over the training images."""

    per_epoch: int
    total: int
    passes: int

    @classmethod
    def of(cls, config: TrainConfig, train_images: int) -> Steps:
        # The last incomplete batch of a pass is dropped: a tiny batch gives BatchNorm noisy statistics.
        per_epoch = train_images // config.batch_size
        if per_epoch == 0:
            raise TrainingError(f"batch_size {config.batch_size} is more than the {train_images} training images")
        total = max(1, round(per_epoch * config.epochs))
        return cls(per_epoch=per_epoch, total=total, passes=math.ceil(total / per_epoch))


@dataclass
class Run:
    """What one process of a training run works with; ``state`` is what the run has done."""

    config: TrainConfig
    world: World
    device: torch.device
    model: nn.Module  # the network itself, what checkpoints hold
    trained: nn.Module  # what the steps call: the network, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: torch.dtype | None
    ema: torch.optim.swa_utils.AveragedModel | None
    steps: Steps
    state: TrainState
    meta: CheckpointMeta  # what every checkpoint of the run says, but for metrics and step
    started: float  # time.perf_counter() when this process began the run

    def seconds(self) -> float:
        """Training time so far, over every process that worked on the run."""
        return self.state.seconds + time.perf_counter() - self.started


def _check_resumable(config: TrainConfig, state: TrainState, *, checkpoint: Path, data: str) -> None:
    # A JSON round trip gives the current config the saved one's types (lists, not tuples).
    current = json.loads(json.dumps(config.to_dict()))
    changed = [key for key in current if key not in RESUMABLE_CHANGES and current[key] != state.config.get(key)]
    if changed:
        was = ", ".join(f"{key}={state.config.get(key)!r}" for key in changed)
        raise TrainingError(f"{checkpoint} was trained with {was}; resume it with the same settings")
    if state.data != data:
        raise TrainingError(f"{checkpoint} was trained on other images than these")


def start_run(
    config: TrainConfig,
    *,
    train_set: Dataset,
    world: World,
    device: torch.device,
    preprocessing: Preprocessing,
    class_names: list[str],
    init_from: Path | None,
    resume_from: Path | None,
    steps: Steps,
    started: float,
) -> Run:
    """Build the model, optimizer, loss scaler and EMA, and put them where ``resume_from``
    stopped if given (then ``init_from`` is not read: the weights come from the run)."""
    model, source = build_model(
        config, class_names=class_names, in_channels=preprocessing.channels,
        init_from=None if resume_from is not None else init_from,
    )
    data = data_fingerprint(train_set)
    state = TrainState(config=config.to_dict(), data=data, train_images=len(train_set))
    if resume_from is not None:
        resume_from = Path(resume_from)
        checkpoint = load_checkpoint(resume_from)
        state = load_train_state(train_state_path(resume_from))
        _check_resumable(config, state, checkpoint=resume_from, data=data)
        if checkpoint.meta.training.get("step") != state.step:
            raise TrainingError(
                f"{resume_from} and {train_state_path(resume_from).name} are from different steps of the run"
            )
        model.load_state_dict(checkpoint.model.state_dict())
        preprocessing = checkpoint.meta.preprocessing
        state.config = config.to_dict()
    if world.world_size > 1 and config.sync_batchnorm:
        model = synchronized_batchnorm(model, device=device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    trained: nn.Module = model
    if world.world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast = _autocast_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast is torch.float16)
    optimizer = make_optimizer(model, config)
    ema = None
    if config.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    if resume_from is not None:
        optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        if ema is not None:
            ema.load_state_dict(state.ema)
    if state.step >= steps.total:
        raise TrainingError(
            f"{resume_from} has finished all {config.epochs} epochs; nothing to resume (raise --epochs to train on)"
        )
    training = {**config.to_dict(), "train_images": len(train_set), "processes": world.world_size}
    if init_from is not None:
        training["init_from"] = Path(init_from).name
    if source is not None:
        training["init_architecture"] = source.architecture
    meta = CheckpointMeta(
        architecture=config.architecture,
        num_classes=len(class_names),
        in_channels=preprocessing.channels,
        class_names=class_names,
        preprocessing=preprocessing,
        training=training,
    )
    return Run(
        config=config, world=world, device=device, model=model, trained=trained, optimizer=optimizer, scaler=scaler,
        autocast=autocast, ema=ema, steps=steps, state=state, meta=meta, started=started,
    )
