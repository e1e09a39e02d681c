"""Validation: top-1, top-5 and the loss of a model on prepared batches, over every process's
share of the images; and a run's validation after an epoch, of its weights and of their EMA."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resnet_serve.datasets import Dataset
from resnet_serve.progress import Reporter
from resnet_serve.training.distributed import World, all_sum, cores_per_process
from resnet_serve.training.loaders import val_batches
from resnet_serve.training.run import Run
from resnet_serve.training.state import EpochStats

__all__ = ["Accuracy", "evaluate", "validate"]

# Validation sees top-5 only with more than 5 classes; with 5 or fewer it is always 100%.
_TOP_K = 5
_ONE_PROCESS = World()


@dataclass(frozen=True)
class Accuracy:
    """Top-1 and top-5 accuracy and the mean cross-entropy over ``images`` images."""

    top1: float
    top5: float | None  # None with 5 classes or fewer
    loss: float
    images: int


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    channels_last: bool = True,
    world: World = _ONE_PROCESS,
) -> Accuracy:
    """Accuracy of ``model`` (put in eval mode, on any device, in float32) on prepared
    (inputs, labels) batches; with several processes, each gives its share and all get the total."""
    model.eval()
    device = next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    k = min(_TOP_K, num_classes)
    top1 = top5 = loss = images = 0.0
    with torch.inference_mode():
        for inputs, labels in batches:
            logits = model(inputs.to(device).contiguous(memory_format=memory_format)).float()
            labels = labels.to(device)
            best = logits.topk(k, dim=1).indices
            top1 += float((best[:, 0] == labels).sum())
            top5 += float((best == labels[:, None]).any(1).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            images += len(labels)
    top1, top5, loss, images = all_sum([top1, top5, loss, images], world=world, device=device)
    count = max(1.0, images)
    return Accuracy(
        top1=top1 / count, top5=top5 / count if num_classes > _TOP_K else None, loss=loss / count, images=int(images)
    )


def validate(run: Run, stats: EpochStats, val_set: Dataset, *, reporter: Reporter) -> None:
    reporter.message(f"validating on {len(val_set)} images")
    per_process = max(1, run.config.batch_size // run.world.world_size)
    workers = cores_per_process(run.world) if run.config.workers is None else run.config.workers

    def accuracy(model: nn.Module) -> Accuracy:
        batches = val_batches(
            val_set, preprocessing=run.meta.preprocessing, world=run.world, batch_size=2 * per_process, workers=workers
        )
        return evaluate(
            model, batches, num_classes=run.meta.num_classes, channels_last=run.config.channels_last, world=run.world
        )

    measured = accuracy(run.model)
    stats.val_top1, stats.val_top5 = measured.top1, measured.top5
    if run.ema is not None:
        measured = accuracy(run.ema.module)
        stats.ema_top1, stats.ema_top5 = measured.top1, measured.top5
