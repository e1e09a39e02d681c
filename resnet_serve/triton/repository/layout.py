"""The layout of an entry, as the official images load it, and reading entries back.

A classifier entry:

    <repository>/<name>/config.pbtxt
    <repository>/<name>/labels.txt          one class name per line (classification extension)
    <repository>/<name>/warmup/input_<i>    real preprocessed images, raw FP32 (model_warmup)
    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/model.plan + model.plan.json   (TensorRT engine + its sidecar)
    <repository>/<name>/<version>/model.py  only for the python-onnxruntime target

and beside it the image pipeline, which takes encoded files instead of float tensors:

    <repository>/<name>-preprocess/         python backend: BYTES (JPEG, PNG, ...) → model input
    <repository>/<name>-image/              ensemble: -preprocess, then <name>; labelled top-k

Versions: every export adds a version folder and leaves the earlier ones; config.pbtxt and
labels.txt are shared by all of them, so a version must keep the entry's classes, input shape,
preprocessing and target (or replace the entry). Preprocessing and other metadata travel in the
config's `parameters`, so any client can read them from the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet_serve.errors import RepositoryError, first_line
from resnet_serve.triton.config import ENSEMBLE_PLATFORM, ModelConfig
from resnet_serve.triton.entry_files import (
    MAX_CONFIG_BYTES,
    MAX_LABEL_BYTES,
    name_problem,
    read_bounded,
    tree_problems,
)
from resnet_serve.triton.serving import get_serving_target

__all__ = [
    "ACCURACY_PARAMETER",
    "CONFIG_FILENAME",
    "IMAGE_INPUT_NAME",
    "INPUT_NAME",
    "LABELS_FILENAME",
    "OUTPUT_NAME",
    "PREPROCESSING_PARAMETER",
    "TARGET_PARAMETER",
    "WARMUP_FOLDER",
    "EntrySummary",
    "ModelEntry",
    "backend_of",
    "check_model_name",
    "entry_target",
    "image_pipeline_names",
    "list_model_entries",
    "model_filename",
    "read_model_entry",
    "read_warmup_images",
    "summarize_repository",
]

CONFIG_FILENAME = "config.pbtxt"

LABELS_FILENAME = "labels.txt"

WARMUP_FOLDER = "warmup"

INPUT_NAME = "input"

OUTPUT_NAME = "logits"

IMAGE_INPUT_NAME = "image"

PREPROCESSING_PARAMETER = "preprocessing"

TARGET_PARAMETER = "serving_target"

ACCURACY_PARAMETER = "test_accuracy"

# The file Triton loads when a config names none (each backend's default).
_DEFAULT_MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "openvino": "model.xml",
                        "python": "model.py"}

_PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt",
                      "pytorch_libtorch": "pytorch", "tensorflow_savedmodel": "tensorflow",
                      "tensorflow_graphdef": "tensorflow", ENSEMBLE_PLATFORM: ENSEMBLE_PLATFORM}


@dataclass(frozen=True)
class ModelEntry:
    """One model of a repository, as written or read back.

    `version` is the one written (or, read back, the highest on disk); `model_path` is its
    model file (None for an ensemble, which has none, or where the backend's file is unknown).
    """

    name: str
    version: int
    versions: tuple[int, ...]
    path: Path
    config_path: Path
    labels_path: Path
    model_path: Path | None
    config: ModelConfig
    class_names: tuple[str, ...]

    @property
    def preprocessing(self) -> dict[str, Any]:
        text = self.config.parameters.get(PREPROCESSING_PARAMETER)
        return json.loads(text) if text else {}


@dataclass(frozen=True)
class EntrySummary:
    """One line of `repo list`: what an entry serves, its versions and their sizes on disk, or
    why it cannot be read (``problem``; the other fields are then empty)."""

    name: str
    target: str
    versions: tuple[int, ...]
    version_bytes: tuple[int, ...]
    test_accuracy: float | None
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "versions": [
                {"version": v, "bytes": size} for v, size in zip(self.versions, self.version_bytes, strict=True)
            ],
            "test_accuracy": self.test_accuracy,
            **({"problem": self.problem} if self.problem else {}),
        }


def check_model_name(name: str) -> None:
    if name_problem(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "not starting with '.' or '-' and without path separators"
        )


def image_pipeline_names(classifier: str) -> tuple[str, str]:
    """The names of a classifier's preprocessing model and image ensemble."""
    return f"{classifier}-preprocess", f"{classifier}-image"


def _version_folders(folder: Path) -> tuple[int, ...]:
    # ASCII digits only ("²".isdigit() is true), kept under their own name: Triton ignores
    # version folders named 0 or with leading zeros.
    return tuple(sorted(int(p.name) for p in folder.iterdir()
                        if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")))


def backend_of(config: ModelConfig) -> str:
    """The Triton backend that loads a config: its `backend`, or the one its platform means."""
    return config.backend or _PLATFORM_BACKENDS.get(config.platform, config.platform)


def model_filename(config: ModelConfig) -> str | None:
    """The file Triton loads from each version folder; None for an ensemble, which has none, and
    for a backend whose default file is not known here."""
    if config.platform == ENSEMBLE_PLATFORM:
        return None
    target = config.parameters.get(TARGET_PARAMETER)
    if target:
        return get_serving_target(target).model_filename
    return config.default_model_filename or _DEFAULT_MODEL_FILES.get(backend_of(config))


def entry_target(config: ModelConfig) -> str:
    """How an entry is served: the resnet-serve target it was written for, else its platform or
    backend (`ensemble`, `python`, ...)."""
    return config.parameters.get(TARGET_PARAMETER) or config.platform or config.backend


def read_model_entry(*, repository: Path, name: str, version: int | None = None) -> ModelEntry:
    """Read one entry back; `version` defaults to the highest version folder present."""
    check_model_name(name)
    folder = repository / name
    config_path = folder / CONFIG_FILENAME
    try:
        config = ModelConfig.parse(read_bounded(config_path, limit=MAX_CONFIG_BYTES).decode("utf-8"))
        versions = _version_folders(folder)
    except (OSError, UnicodeDecodeError, RepositoryError) as error:
        raise RepositoryError(f"cannot read model {name!r} in {repository}: {first_line(error)}") from None
    if config.name != name:
        raise RepositoryError(f"{config_path} names model {config.name!r}, expected {name!r}")
    if not versions:
        raise RepositoryError(f"model {name!r} in {repository} has no version folder")
    version = max(versions) if version is None else version
    labelled = [t.label_filename for t in config.outputs if t.label_filename]
    labels_path = folder / (labelled[0] if labelled else LABELS_FILENAME)
    # Split as Triton's label provider splits them, on "\n" alone.
    class_names = tuple(
        read_bounded(labels_path, limit=MAX_LABEL_BYTES).decode("utf-8", errors="replace").removesuffix("\n")
        .split("\n")
    ) if labels_path.is_file() else ()
    filename = model_filename(config)
    return ModelEntry(
        name=name,
        version=version,
        versions=versions,
        path=folder,
        config_path=config_path,
        labels_path=labels_path,
        model_path=None if filename is None else folder / str(version) / filename,
        config=config,
        class_names=class_names,
    )


def _entry_folders(repository: Path) -> Iterator[Path]:
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist")
    for folder in sorted(repository.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and (folder / CONFIG_FILENAME).is_file():
            yield folder


def list_model_entries(repository: Path) -> list[ModelEntry]:
    """Every entry of a repository, sorted by name; hidden (staging) folders are skipped."""
    return [read_model_entry(repository=repository, name=folder.name) for folder in _entry_folders(repository)]


def _accuracy(config: ModelConfig) -> float | None:
    try:
        value = json.loads(config.parameters.get(ACCURACY_PARAMETER, "null"))
    except ValueError:
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarize_repository(repository: Path) -> list[EntrySummary]:
    """`repo list`: every entry with its target, versions, bytes per version and recorded
    accuracy; an entry that cannot be read is listed with why (nothing is read from a folder
    that would hang or exhaust a reader: see ``entry_files``)."""
    summaries = []
    for folder in _entry_folders(repository):
        problem = name_problem(folder.name) or next(tree_problems(folder), "")
        entry = None
        try:
            entry = None if problem else read_model_entry(repository=repository, name=folder.name)
        except RepositoryError as error:
            problem = str(error)
        if entry is None:
            summaries.append(EntrySummary(name=folder.name, target="", versions=(), version_bytes=(),
                                          test_accuracy=None, problem=problem))
            continue
        sizes = tuple(
            sum(p.stat().st_size for p in (entry.path / str(v)).rglob("*") if p.is_file()) for v in entry.versions
        )
        summaries.append(EntrySummary(
            name=entry.name, target=entry_target(entry.config), versions=entry.versions,
            version_bytes=sizes, test_accuracy=_accuracy(entry.config),
        ))
    return summaries


def read_warmup_images(entry: ModelEntry) -> np.ndarray | None:
    """A classifier's warm-up images as written by ``write_model_entry``: one N×C×H×W float32
    batch, or None when it has none."""
    files = [w.inputs[INPUT_NAME].input_data_file for w in entry.config.model_warmup
             if INPUT_NAME in w.inputs and w.inputs[INPUT_NAME].input_data_file]
    if not files:
        return None
    shape = entry.config.inputs[0].dims
    images = []
    for name in files:
        path = entry.path / WARMUP_FOLDER / name
        try:
            images.append(np.fromfile(path, dtype="<f4").reshape(shape))
        except (OSError, ValueError) as error:
            raise RepositoryError(f"{path} is not a {list(shape)} FP32 warm-up image: {error}") from None
    return np.stack(images)
