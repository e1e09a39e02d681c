"""What a run writes after each epoch, from its first process only: the checkpoint of the
weights so far, the best one, the EMA one, and the state a resume needs.

Every checkpoint's metrics carry the validation top-1 as ``test_accuracy``, the name the Triton
repository writer reads into the model's config.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from resnet_serve.checkpoints import save_checkpoint
from resnet_serve.training.run import Run
from resnet_serve.training.state import EpochStats, beside, save_train_state, train_state_path

__all__ = ["save_run"]


def _metrics(stats: EpochStats, *, ema: bool = False) -> dict[str, float]:
    metrics = {"train_loss": stats.train_loss, "epoch": float(stats.epoch)}
    top1, top5 = (stats.ema_top1, stats.ema_top5) if ema else (stats.val_top1, stats.val_top5)
    if top1 is not None:
        metrics["test_accuracy"] = top1
    if top5 is not None:
        metrics["test_top5"] = top5
    return metrics


def save_run(run: Run, output: Path, stats: EpochStats, *, best: bool) -> None:
    """The checkpoints of the weights so far (and the best and EMA ones), and what a resume needs."""
    state = run.state
    state.seconds = run.seconds()
    state.optimizer = run.optimizer.state_dict()
    state.scaler = run.scaler.state_dict() if run.scaler.is_enabled() else {}
    state.ema = run.ema.state_dict() if run.ema is not None else {}
    training = {**run.meta.training, "seconds": round(state.seconds, 1), "step": state.step}
    meta = replace(run.meta, metrics=_metrics(stats), training=training)
    # The state goes first: a crash between the two writes leaves a checkpoint whose step
    # differs from its state's, which a resume detects rather than continuing wrongly.
    save_train_state(train_state_path(output), state)
    save_checkpoint(output, model=run.model, meta=meta)
    if best:
        save_checkpoint(beside(output, ".best.safetensors"), model=run.model, meta=meta)
    if run.ema is not None:
        ema_meta = replace(meta, metrics=_metrics(stats, ema=True))
        save_checkpoint(beside(output, ".ema.safetensors"), model=run.ema.module, meta=ema_meta)
