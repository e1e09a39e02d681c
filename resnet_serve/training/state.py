"""What a run keeps beside its checkpoint to be resumed (``<name>.train-state.safetensors``:
optimizer state, EMA weights, loss scale, step, history; no pickles), and its per-epoch history
as CSV and a plot.

Nothing random is saved: the order of images and every augmentation are derived from the seed,
the epoch and the image, so a resumed run needs only the step to go on as the interrupted one
would have, with any number of processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from resnet_serve.datasets import Dataset, ImageFolder
from resnet_serve.errors import CheckpointError, first_line
from resnet_serve.files import replacing_atomically

__all__ = [
    "EpochStats",
    "TrainState",
    "beside",
    "data_fingerprint",
    "load_train_state",
    "plot_history",
    "save_train_state",
    "train_state_path",
    "write_history_csv",
]

# The safetensors header key of a train state's JSON, and the version of what it holds.
_STATE_KEY = "resnet_serve_train_state"
_FORMAT = 2


@dataclass
class EpochStats:
    """One pass over the training images: running loss and accuracy over its augmented
    batches, and what validation measured after it (None where it did not run)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    seconds: float
    images_per_second: float = 0.0
    val_top1: float | None = None
    val_top5: float | None = None
    ema_top1: float | None = None
    ema_top5: float | None = None
    lr: float = 0.0  # the backbone's, at the epoch's last step


@dataclass
class TrainState:
    """How far a run has come, beyond the weights in its checkpoint."""

    config: dict[str, Any]
    data: str  # data_fingerprint() of the training images
    train_images: int
    step: int = 0
    images_seen: int = 0
    seconds: float = 0.0
    best_top1: float | None = None
    history: list[EpochStats] = field(default_factory=list)
    optimizer: dict[str, Any] = field(default_factory=dict)  # torch's state_dict(), tensors included
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # AveragedModel's state_dict()
    scaler: dict[str, Any] = field(default_factory=dict)  # GradScaler's state_dict()


def beside(checkpoint: Path, suffix: str) -> Path:
    """``<name><suffix>`` in the checkpoint's folder (``m.safetensors`` → ``m.best.safetensors``)."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + suffix)


def train_state_path(checkpoint: Path) -> Path:
    """Where a run keeps what it needs to resume, beside its checkpoint."""
    return beside(checkpoint, ".train-state.safetensors")


def data_fingerprint(dataset: Dataset) -> str:
    """A digest of which images a run trains on, in order, and their labels: a folder's
    class/file names (not where the folder is mounted), an in-memory set's pixels."""
    digest = hashlib.sha256(np.ascontiguousarray(dataset.labels).tobytes())
    if isinstance(dataset, ImageFolder):
        for path in dataset.files:
            digest.update(f"{path.parent.name}/{path.name}\n".encode())
    else:
        digest.update(np.ascontiguousarray(dataset.images).data)
    return digest.hexdigest()[:16]


def save_train_state(path: Path, state: TrainState) -> None:
    """Write ``state`` atomically: a run killed while saving leaves the previous one to resume from."""
    tensors: dict[str, torch.Tensor] = {}
    optimizer_state: dict[str, dict[str, Any]] = {}
    for index, values in state.optimizer.get("state", {}).items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                optimizer_state.setdefault(str(index), {})[key] = value
    for name, value in state.ema.items():
        tensors[f"ema.{name}"] = value.detach().cpu().contiguous()
    record = {
        "format": _FORMAT,
        **{key: value for key, value in asdict(state).items() if key not in ("optimizer", "ema", "history")},
        "history": [asdict(stats) for stats in state.history],
        "optimizer": {"param_groups": state.optimizer.get("param_groups", []), "state": optimizer_state},
    }
    with replacing_atomically(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt", _STATE_KEY: json.dumps(record)})


def load_train_state(path: Path) -> TrainState:
    """Read a state ``save_train_state`` wrote.

    Raises:
        CheckpointError: no such file, not a train state, or one of an earlier version.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {})[_STATE_KEY])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; only runs of this version can be resumed") from None
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a train state ({first_line(exc)})") from None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path}: written by an earlier version of resnet-serve; only runs of this version can be resumed"
        )
    optimizer_state: dict[int, dict[str, Any]] = {
        int(index): dict(values) for index, values in record["optimizer"]["state"].items()
    }
    ema: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "ema":
            ema[rest] = tensor
        elif kind == "optimizer":
            index, _, key = rest.partition(".")
            optimizer_state.setdefault(int(index), {})[key] = tensor
    return TrainState(
        config=record["config"],
        data=record["data"],
        train_images=record["train_images"],
        step=record["step"],
        images_seen=record["images_seen"],
        seconds=record["seconds"],
        best_top1=record["best_top1"],
        history=[EpochStats(**stats) for stats in record["history"]],
        optimizer={"state": optimizer_state, "param_groups": record["optimizer"]["param_groups"]},
        ema=ema,
        scaler=record["scaler"],
    )


_CSV_COLUMNS = (
    "epoch", "train_loss", "train_accuracy", "val_top1", "val_top5", "ema_top1", "ema_top5", "lr", "seconds",
    "images_per_second",
)


def write_history_csv(path: Path, history: list[EpochStats]) -> None:
    with replacing_atomically(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for stats in history:
            writer.writerow({key: "" if value is None else value for key, value in asdict(stats).items()})


def plot_history(path: Path, history: list[EpochStats], *, title: str) -> None:
    # The object-oriented API touches no global pyplot state or GUI backend.
    from matplotlib.figure import Figure

    epochs = [stats.epoch for stats in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [stats.train_loss for stats in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="loss")
    accuracy_axes.plot(epochs, [100 * stats.train_accuracy for stats in history], marker="o", label="train")
    for key, label, marker in (("val_top1", "validation", "s"), ("ema_top1", "validation, EMA weights", "^")):
        measured = [stats for stats in history if getattr(stats, key) is not None]
        if measured:
            accuracy_axes.plot(
                [stats.epoch for stats in measured], [100 * getattr(stats, key) for stats in measured],
                marker=marker, label=label,
            )
    accuracy_axes.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    accuracy_axes.legend()
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    with replacing_atomically(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
