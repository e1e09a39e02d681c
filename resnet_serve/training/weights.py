"""Where a run's weights start and which of them train: a fresh model, or one started from a
checkpoint's weights (``--init``: any resnet-serve checkpoint, an ``import`` ed torchvision or
timm one included) with a head for the run's classes; then all of it trains, or only the last
stage and the head, or only the head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from resnet_serve.checkpoints import CheckpointMeta, transfer_weights
from resnet_serve.models import create_model
from resnet_serve.training.recipes import TrainConfig

__all__ = ["build_model", "frozen_modules", "set_train_mode"]


def _last_stage(model: nn.Module) -> list[str]:
    stages = sorted((name for name, _ in model.named_children() if name.startswith("layer")), key=lambda n: int(n[5:]))
    # Pre-activation nets normalise the last stage's sum in a BatchNorm of their own.
    return [stages[-1], *(["final_bn"] if hasattr(model, "final_bn") else [])]


def frozen_modules(model: nn.Module, trainable: str) -> list[nn.Module]:
    """The top-level parts of ``model`` that do not train under ``trainable`` ("all",
    "last-stage" or "head")."""
    if trainable == "all":
        return []
    training = {"fc", *(_last_stage(model) if trainable == "last-stage" else [])}
    return [module for name, module in model.named_children() if name not in training]


def set_train_mode(model: nn.Module, trainable: str) -> None:
    """Training mode, except for frozen parts: their BatchNorm statistics stay as loaded."""
    model.train()
    for module in frozen_modules(model, trainable):
        module.eval()


def build_model(
    config: TrainConfig,
    *,
    class_names: list[str],
    in_channels: int,
    init_from: Path | None,
) -> tuple[nn.Module, CheckpointMeta | None]:
    """The model a run starts from, seeded by ``config.seed``, on the CPU, with the parameters
    of its frozen parts not requiring gradients; and the ``init_from`` checkpoint's metadata.

    Raises:
        CheckpointError: ``init_from`` is unreadable or its weights do not fit (one line naming them).
    """
    torch.manual_seed(config.seed)
    model = create_model(
        config.architecture, num_classes=len(class_names), in_channels=in_channels,
        zero_init_last=config.zero_init_last,
    )
    source = None
    if init_from is not None:
        source = transfer_weights(init_from, model=model, architecture=config.architecture, class_names=class_names)
    for module in frozen_modules(model, config.trainable):
        module.requires_grad_(False)
    return model, source
