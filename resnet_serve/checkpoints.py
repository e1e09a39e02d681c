"""Checkpoints as safetensors files that carry everything needed to serve them: architecture,
class names and preprocessing travel as JSON in the header, so no code is ever unpickled.

Foreign weights (torchvision or timm state dicts, bare safetensors files) come in through
``import_foreign_weights``, which maps them onto our architectures; pickles are read with
``torch.load(weights_only=True)`` only, so a file that holds anything but tensors is refused.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from resnet_serve import __version__
from resnet_serve.errors import CheckpointError, ResnetServeError, first_line
from resnet_serve.files import replacing_atomically
from resnet_serve.models import architecture_info, create_model
from resnet_serve.preprocessing import Preprocessing

__all__ = [
    "IMAGENET_PREPROCESSING",
    "Checkpoint",
    "CheckpointMeta",
    "ImportedWeights",
    "imagenet_class_names",
    "import_foreign_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "read_checkpoint_meta",
    "read_class_names",
    "save_checkpoint",
    "transfer_weights",
]

# The safetensors header key under which our metadata lives, as one JSON string.
_METADATA_KEY = "resnet_serve"

# What torch.save writes; read with weights_only=True, never as plain pickles.
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
# Training scripts wrap the weights in their own bookkeeping (epoch, optimizer state).
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")
# Deep enough for {"model": {"state_dict": …}}, and bounded because a pickle can hold a
# dict that contains itself.
_MAX_NESTING = 3
# DataParallel/DistributedDataParallel and torch.compile prefix every key of the model they wrap.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Every architecture in the registry names its classifier `fc`.
_HEAD_KEYS = ("fc.weight", "fc.bias")

# How torchvision's IMAGENET1K_V1 and most timm ResNets were evaluated: shorter side to 256,
# centre crop 224, ImageNet's channel statistics.
IMAGENET_PREPROCESSING = Preprocessing(
    channels=3, height=224, width=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_count(value: Any) -> bool:
    # bool is an int in Python: `"num_classes": true` must not mean one class.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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

    def onnx_metadata(self) -> dict[str, str]:
        """What an exported model carries in its ``metadata_props`` to be served without us."""
        return {
            "architecture": self.architecture,
            "class_names": json.dumps(self.class_names),
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
        }

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
            "num_classes": _is_count(data["num_classes"]),
            "in_channels": _is_count(data["in_channels"]),
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
    with replacing_atomically(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def _read_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix in (*_PICKLE_SUFFIXES, ".pkl"):
        raise CheckpointError(
            f"{path}: pickled checkpoints are not loaded (they can run code); "
            "resnet-serve reads .safetensors files (convert one with `resnet-serve import`)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None


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


@dataclass
class _WeightDiff:
    """How a set of weights differs from what a model expects, by name and shape."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    @classmethod
    def between(cls, expected: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> _WeightDiff:
        return cls(
            missing=[name for name in expected if name not in weights],
            unexpected=[name for name in weights if name not in expected],
            wrong_shape=[
                f"{name} {tuple(weights[name].shape)} ≠ {tuple(tensor.shape)}"
                for name, tensor in expected.items()
                if name in weights and weights[name].shape != tensor.shape
            ],
        )

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def error(self, path: Path, architecture: str) -> CheckpointError:
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing ({_describe(self.missing)})")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected ({_describe(self.unexpected)})")
        if self.wrong_shape:
            problems.append(f"{len(self.wrong_shape)} of another shape ({_describe(self.wrong_shape)})")
        return CheckpointError(f"{path}: weights do not match {architecture}: {'; '.join(problems)}")


def _build_model(path: Path, architecture: str, *, num_classes: int | None, in_channels: int) -> nn.Module:
    try:
        return create_model(architecture, num_classes=num_classes, in_channels=in_channels)
    except ResnetServeError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` into a fresh model of its architecture.

    The header's architecture and class count are checked against the file's tensor shapes on
    a model without storage (the meta device) before any weight is allocated, so a small file
    whose header claims millions of classes is refused for what it holds.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    weights = _read_safetensors(path)
    with torch.device("meta"):
        expected = _build_model(
            path, meta.architecture, num_classes=meta.num_classes, in_channels=meta.in_channels
        ).state_dict()
    diff = _WeightDiff.between(expected, weights)
    if diff:
        raise diff.error(path, meta.architecture)
    model = _build_model(path, meta.architecture, num_classes=meta.num_classes, in_channels=meta.in_channels)
    model.load_state_dict(weights, strict=True)
    model.eval()
    return Checkpoint(model=model, meta=meta, path=path)


def _parse_class_names(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_class_names() -> list[str]:
    """The 1000 ILSVRC-2012 class names in the index order ImageNet checkpoints use.

    Shipped as package data: the first WordNet lemma of each synset, as in torchvision's
    categories (derived from timm's Apache-2.0 ``imagenet_synsets.txt`` and
    ``imagenet_synset_to_lemma.txt``). "crane" and "maillot" each name two classes there too.
    """
    text = resources.files("resnet_serve").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return _parse_class_names(text)


def read_class_names(path: Path | str) -> list[str]:
    """Class names from a text file, one per line in index order; blank lines are skipped."""
    path = Path(path)
    try:
        names = _parse_class_names(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable class names ({exc})") from None
    if not names:
        raise CheckpointError(f"{path}: no class names in it")
    return names


def _load_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        # torch names the refused global as "Unsupported global: GLOBAL os.system" (2.4-2.5) or
        # "unsupported GLOBAL posix.system whose module posix is blocked" (2.6+), in the zip,
        # the legacy and the raw pickle form alike.
        forbidden = re.search(r"GLOBAL ([\w.]+)", message)
        if forbidden:
            raise CheckpointError(
                f"refusing {path}: loading it would call {forbidden.group(1)}, and only tensors are loaded "
                "(a pickle can run code); save only model.state_dict(), or use safetensors"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({reason.group(1) if reason else 'corrupt pickle'})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None


def _find_state_dict(loaded: Any, path: Path) -> dict[str, Tensor]:
    found = loaded
    for _ in range(_MAX_NESTING + 1):
        if not isinstance(found, Mapping):
            break
        if found and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in found.items()):
            return dict(found)
        found = next((found[key] for key in _CONTAINER_KEYS if isinstance(found.get(key), Mapping)), None)
    if isinstance(loaded, Mapping):
        what = f"a mapping with keys {_describe([str(key) for key in loaded], limit=5)}"
    else:
        what = type(loaded).__name__
    raise CheckpointError(f"{path}: no state dict (names to tensors) in it, found {what}")


def _strip_wrapper_prefixes(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    # Wrappers nest (torch.compile around DataParallel), so peel until none is left.
    while weights:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(name.startswith(p) for name in weights)), None)
        if prefix is None:
            break
        weights = {name[len(prefix):]: tensor for name, tensor in weights.items()}
    return weights


def load_state_dict_file(path: Path | str) -> dict[str, Tensor]:
    """The tensors of a state-dict file: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` from ``torch.save``.

    Pickles are read with ``weights_only=True``: one holding other Python objects (which could
    run code while loading) is refused. The weights are unwrapped from common training
    containers (``{"state_dict": …}``, ``{"model": …}``) and from DataParallel's ``module.``
    and torch.compile's ``_orig_mod.`` key prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        weights = _read_safetensors(path)
    elif path.suffix in _PICKLE_SUFFIXES:
        weights = _find_state_dict(_load_pickle(path), path)
    else:
        raise CheckpointError(
            f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, {', '.join(_PICKLE_SUFFIXES)}"
        )
    return _strip_wrapper_prefixes(weights)


@dataclass
class ImportedWeights:
    """Foreign weights on one of our architectures, ready for ``save_checkpoint``.

    ``replaced_head`` says the classifier was freshly initialised (untrained) because the
    weights had none or had another number of classes. ``missing`` (left at their fresh initialisation)
    and ``unexpected`` (ignored) can only be non-empty for a non-strict import.
    """

    model: nn.Module
    meta: CheckpointMeta
    source: Path
    replaced_head: bool
    missing: list[str]
    unexpected: list[str]


def import_foreign_weights(
    path: Path | str,
    *,
    architecture: str,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    strict: bool = True,
) -> ImportedWeights:
    """Map a torchvision or timm ResNet state dict (or a bare safetensors file) onto ``architecture``.

    Our ResNets use torchvision's parameter names, which timm's standard ResNets share, so no
    key is renamed. ``num_classes`` defaults to the size of the weights' head; another size
    (or any size, for weights without a head) gets a fresh head (fine-tuning). A 1000-class head gets the ImageNet class
    names, other sizes ``class_0``…; ImageNet-family architectures get ImageNet preprocessing.
    Keys or shapes that do not match raise one ``CheckpointError`` listing them; with
    ``strict=False`` missing and unexpected keys are tolerated (and reported), shapes never.
    """
    path = Path(path)
    if num_classes is not None and num_classes < 1:
        raise CheckpointError(f"num_classes must be positive, got {num_classes}")
    weights = load_state_dict_file(path)
    head = weights.get("fc.weight")
    stem = weights.get("conv1.weight")
    in_channels = int(stem.shape[1]) if stem is not None and stem.ndim == 4 else 3
    requested_classes = num_classes
    if num_classes is None and head is not None and head.ndim == 2:
        num_classes = int(head.shape[0])
    # Shapes alone decide whether the weights fit, so a mismatch fails before any allocation.
    with torch.device("meta"):
        expected = _build_model(path, architecture, num_classes=num_classes, in_channels=in_channels).state_dict()
    if preprocessing is None:
        if architecture_info(architecture).family != "imagenet" or in_channels != 3:
            raise CheckpointError(
                f"{path}: no default preprocessing for {architecture} with {in_channels} input channels; give one"
            )
        preprocessing = IMAGENET_PREPROCESSING
    classes = int(expected["fc.weight"].shape[0])
    # A fresh head for a headless backbone, or for another number of classes; a head of
    # another width, though, means another architecture and is left for the diff to report.
    if head is None:
        replaced_head = requested_classes is not None
    else:
        replaced_head = head.shape != expected["fc.weight"].shape and head.shape[1:] == expected["fc.weight"].shape[1:]
    if class_names is None:
        class_names = imagenet_class_names() if classes == 1000 else [f"class_{i}" for i in range(classes)]
    training: dict[str, Any] = {"imported_from": path.name}
    if replaced_head:
        training["head_replaced"] = True
    meta = CheckpointMeta(
        architecture=architecture.lower(),
        num_classes=classes,
        in_channels=in_channels,
        class_names=list(class_names),
        preprocessing=preprocessing,
        training=training,
    )

    # Left at the fresh model's values: BatchNorm's step counter only matters in training (and
    # older torchvision files predate it); a replaced head is new by definition.
    fresh = {name for name in expected if name.endswith(".num_batches_tracked")}
    if replaced_head:
        weights = {name: tensor for name, tensor in weights.items() if name not in _HEAD_KEYS}
        fresh.update(_HEAD_KEYS)
    diff = _WeightDiff.between(expected, weights)
    diff.missing = [name for name in diff.missing if name not in fresh]
    blocking = diff if strict else _WeightDiff(missing=[], unexpected=[], wrong_shape=diff.wrong_shape)
    if blocking:
        raise blocking.error(path, architecture)
    model = _build_model(path, architecture, num_classes=num_classes, in_channels=in_channels)
    # Our diff above is the check; torch's own would also reject the tolerated gaps.
    model.load_state_dict({name: tensor for name, tensor in weights.items() if name in expected}, strict=False)
    model.eval()
    return ImportedWeights(
        model=model, meta=meta, source=path, replaced_head=replaced_head,
        missing=diff.missing, unexpected=diff.unexpected,
    )


def transfer_weights(
    path: Path | str, *, model: nn.Module, architecture: str, class_names: list[str]
) -> CheckpointMeta:
    """Copy the weights of checkpoint ``path`` into ``model`` (an ``architecture`` with a head of
    ``len(class_names)`` classes), to fine-tune them; return the checkpoint's metadata.

    Every tensor is copied, the classifier's only when the checkpoint classifies the same
    ``class_names`` (a head for other classes is left as ``model`` has it, freshly initialised).
    Names and shapes are checked first, on tensors that are only read, so a mismatch changes
    nothing.

    Raises:
        CheckpointError: the checkpoint cannot be read, or a tensor other than the classifier's
            is missing, unexpected or of another shape (one line naming them).
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    weights = _read_safetensors(path)
    expected = model.state_dict()
    fresh = set()
    if meta.class_names != list(class_names):
        weights = {name: tensor for name, tensor in weights.items() if name not in _HEAD_KEYS}
        fresh.update(_HEAD_KEYS)
    diff = _WeightDiff.between(expected, weights)
    diff.missing = [name for name in diff.missing if name not in fresh]
    if diff:
        raise diff.error(path, architecture)
    model.load_state_dict(weights, strict=False)
    return meta
