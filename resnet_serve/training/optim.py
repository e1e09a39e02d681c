"""The optimizer and its learning-rate schedule: SGD or AdamW over the weights that train, with
weight decay on convolution and linear weights only, a learning rate of its own for the
classifier, and linear warm-up into a cosine, step or constant schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from resnet_serve.training.recipes import TrainConfig

__all__ = ["HEAD_PREFIX", "learning_rate", "lr_factor", "make_optimizer", "set_learning_rate"]

# Every architecture in the registry names its classifier `fc`.
HEAD_PREFIX = "fc."


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """The schedule at ``step`` of ``total``, as a fraction of each parameter group's peak rate."""
    warmup_steps = max(1, round(config.warmup * total))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        passed = sum(step >= round(milestone * total) for milestone in config.milestones)
        return 0.1**passed
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """The backbone's learning rate at ``step`` of ``total``."""
    return config.lr * lr_factor(step, total, config)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW as ``config`` says, over the parameters that require gradients.

    Each group keeps its peak rate in ``"peak_lr"``: the schedule sets ``lr`` to
    ``peak_lr × lr_factor(step)``, so the head keeps its ratio to the backbone throughout.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Decaying BatchNorm scales and biases only fights the normalisation; common practice skips them.
            groups.setdefault((name.startswith(HEAD_PREFIX), param.ndim > 1), []).append(param)
    head_lr = config.head_lr if config.head_lr is not None else config.lr
    param_groups = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decayed else 0.0,
            "lr": head_lr if head else config.lr,
            "peak_lr": head_lr if head else config.lr,
        }
        # A fixed order: the optimizer's saved state is matched to groups by position.
        for (head, decayed), params in sorted(groups.items())
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr)
    return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor
