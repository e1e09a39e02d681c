"""Checkpoints as safetensors files that carry everything needed to serve them: architecture,
class names and preprocessing travel as JSON in the header, so no code is ever unpickled."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from resnet_serve import __version__
from resnet_serve.data import Preprocessing
from resnet_serve.errors import CheckpointError, ResnetServeError
from resnet_serve.models import create_model

__all__ = ["Checkpoint", "CheckpointMeta", "load_checkpoint", "read_checkpoint_meta", "save_checkpoint"]

# The safetensors header key under which our metadata lives, as one JSON string.
_METADATA_KEY = "resnet_serve"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself, beyond its weights.

    ``metrics`` holds what the weights reached (e.g. ``test_accuracy``); ``training`` the
    configuration that produced them.
    """

    architecture: str
    num_classes: int
    in_channels: int
    class_names: list[str]
    preprocessing: Preprocessing
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    created: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise CheckpointError(
                f"{len(self.class_names)} class names for a {self.num_classes}-class model"
            )
        if self.preprocessing.channels != self.in_channels:
            raise CheckpointError(
                f"preprocessing gives {self.preprocessing.channels} channels, "
                f"the model takes {self.in_channels}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input of one image, C×H×W."""
        return self.preprocessing.input_shape

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": dict(self.metrics),
            "training": dict(self.training),
            "version": self.version,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointMeta:
        """Rebuild from ``to_dict()``'s output, checking every field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint metadata must be a mapping, got {type(data).__name__}")
        required = {"architecture", "num_classes", "in_channels", "class_names", "preprocessing"}
        missing = sorted(required - data.keys())
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {', '.join(missing)}")
        checks = {
            "architecture": isinstance(data["architecture"], str),
            "num_classes": isinstance(data["num_classes"], int) and data["num_classes"] > 0,
            "in_channels": isinstance(data["in_channels"], int) and data["in_channels"] > 0,
            "class_names": isinstance(data["class_names"], list)
            and all(isinstance(name, str) for name in data["class_names"]),
            "metrics": isinstance(data.get("metrics", {}), dict),
            "training": isinstance(data.get("training", {}), dict),
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise CheckpointError(f"checkpoint metadata has invalid {', '.join(bad)}")
        try:
            preprocessing = Preprocessing.from_dict(data["preprocessing"])
        except ResnetServeError as exc:
            raise CheckpointError(f"checkpoint metadata: {exc}") from None
        return cls(
            architecture=data["architecture"],
            num_classes=data["num_classes"],
            in_channels=data["in_channels"],
            class_names=list(data["class_names"]),
            preprocessing=preprocessing,
            metrics=dict(data.get("metrics", {})),
            training=dict(data.get("training", {})),
            version=str(data.get("version", "unknown")),
            created=str(data.get("created", "unknown")),
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, in eval mode on the CPU, and its metadata."""

    model: nn.Module
    meta: CheckpointMeta
    path: Path


def save_checkpoint(path: Path | str, *, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to a safetensors file.

    The file appears atomically (written beside the target, then renamed), so a crash or a
    concurrent reader never sees half a checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous tensors that share no storage.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    metadata = {"format": "pt", _METADATA_KEY: json.dumps(meta.to_dict())}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _read_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix in (".pt", ".pth", ".pkl", ".bin"):
        raise CheckpointError(
            f"{path}: pickled checkpoints are not loaded (they can run code); "
            "resnet-serve reads .safetensors files"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None


def read_checkpoint_meta(path: Path | str) -> CheckpointMeta:
    """Only the metadata of a checkpoint, without building the model."""
    path = Path(path)
    header = _read_header(path)
    if _METADATA_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without resnet-serve metadata")
    try:
        data = json.loads(header[_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: resnet-serve metadata is not valid JSON ({exc})") from None
    try:
        return CheckpointMeta.from_dict(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _describe(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` into a fresh model of its architecture."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        model = create_model(meta.architecture, num_classes=meta.num_classes, in_channels=meta.in_channels)
    except ResnetServeError as exc:
        raise CheckpointError(f"{path}: {exc}") from None

    try:
        with safe_open(str(path), framework="pt") as handle:
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None

    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    wrong_shape = [
        f"{name} {tuple(weights[name].shape)} ≠ {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in weights and weights[name].shape != tensor.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_describe(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_describe(unexpected)})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} of another shape ({_describe(wrong_shape)})")
        raise CheckpointError(
            f"{path}: weights do not match {meta.architecture}: {'; '.join(problems)}"
        )
    model.load_state_dict(weights, strict=True)
    model.eval()
    return Checkpoint(model=model, meta=meta, path=path)
