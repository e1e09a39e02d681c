"""Labelled images in their real on-disk formats, behind one streaming interface.

Every reader gives a :class:`Dataset`: class names and labels up front (cheap to hold), images
prepared for a model only when read, by index, through the model's ``Preprocessing``. The IDX
and CIFAR readers hold their uint8 arrays in memory (:class:`InMemoryDataset`); an ImageFolder
tree holds only its file list (:class:`ImageFolder`) and decodes each image when it is read, so
evaluation and verification of any size of folder run in bounded memory through
:func:`batches`, and training streams a folder through DataLoader workers
(``resnet_serve.training.data``); ``to_memory()`` gives uint8 pixels of one size in memory to
callers that want them all at once (the paper's experiments on IDX and CIFAR).

The serving contract itself, ``Preprocessing``, lives apart in ``resnet_serve.preprocessing``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from resnet_serve.datasets.cifar import is_cifar_folder, load_cifar_dataset
from resnet_serve.datasets.idx import (
    DEFAULT_DATA_DIR,
    FASHION_MNIST_CLASSES,
    is_idx_folder,
    load_default_dataset,
    load_idx_dataset,
    read_idx,
)
from resnet_serve.datasets.image_folder import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    has_class_folders,
    has_split_folders,
    load_image_folder,
    visible_entries,
)
from resnet_serve.datasets.in_memory import InMemoryDataset, checked_indices
from resnet_serve.errors import DatasetError
from resnet_serve.preprocessing import Preprocessing

__all__ = [
    "DEFAULT_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "Dataset",
    "ImageFolder",
    "InMemoryDataset",
    "batches",
    "load_cifar_dataset",
    "load_dataset",
    "load_default_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "read_idx",
]


class Dataset(Protocol):
    """What every reader gives: labels up front, images read by index as a model wants them."""

    class_names: list[str]
    labels: np.ndarray  # int64, one per image, each an index into class_names

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int] | np.ndarray, *, preprocessing: Preprocessing) -> np.ndarray:
        """The images at ``indices`` as float32 N×C×H×W, prepared as ``preprocessing`` says."""
        ...

    def to_memory(self, indices: Sequence[int] | np.ndarray | None = None) -> InMemoryDataset:
        """The images at ``indices`` (all by default) as uint8 pixels in memory, for training."""
        ...


def batches(
    dataset: Dataset,
    *,
    preprocessing: Preprocessing,
    batch_size: int,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, labels) of ``batch_size`` images at a time (the last batch may be smaller), each
    read only when it is asked for, so memory holds one batch, not the dataset.

    Args:
        dataset: any :class:`Dataset`.
        preprocessing: how images become float32 N×C×H×W model input.
        batch_size: images per batch, at least 1.
        indices: which images, in this order; all of them by default.

    Raises:
        DatasetError: a batch size below 1 or an index outside the dataset, at once, before the
            first batch is read.
    """
    if batch_size < 1:
        raise DatasetError(f"batch size must be at least 1, got {batch_size}")
    chosen = checked_indices(range(len(dataset)) if indices is None else indices, len(dataset))

    def read_in_turn() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(chosen), batch_size):
            part = chosen[start : start + batch_size]
            yield dataset.read(part, preprocessing=preprocessing), dataset.labels[part]

    return read_in_turn()


def load_dataset(path: Path | str | None, *, split: Literal["train", "test"]) -> Dataset:
    """Open a dataset in whichever supported format ``path`` holds.

    None (or the installed Fashion-MNIST folder) → Fashion-MNIST with its class names; a folder
    of IDX files → :func:`load_idx_dataset`; a CIFAR archive or extracted folder →
    :func:`load_cifar_dataset`; a tree of class folders (optionally under ``train/`` and
    ``val/``; "test" reads ``val/`` when there is no ``test/``) → :func:`load_image_folder`,
    whose images may have any size.
    """
    if path is None or Path(path).resolve() == DEFAULT_DATA_DIR.resolve():
        return load_default_dataset(split=split)
    path = Path(path)
    if path.is_file():
        if tarfile.is_tarfile(path):
            return load_cifar_dataset(path, split=split)
        found = "a file that is not a tar archive"
    elif path.is_dir():
        if is_idx_folder(path):
            return load_idx_dataset(path, split=split)
        if is_cifar_folder(path):
            return load_cifar_dataset(path, split=split)
        if has_split_folders(path):
            return load_image_folder(path, split=split)
        if has_class_folders(path):
            return load_image_folder(path)
        entries = [entry.name for entry in visible_entries(path)]
        more = ", ..." if len(entries) > 3 else ""
        found = f"a folder with {', '.join(entries[:3])}{more}" if entries else "an empty folder"
    else:
        raise DatasetError(f"{path}: no such file or folder")
    raise DatasetError(
        f"{path}: {found}; expected an IDX folder (train-images-idx3-ubyte[.gz], ...), "
        "a CIFAR archive or folder (cifar-10-python.tar.gz, cifar-10-batches-py/, cifar-100-python/) "
        "or an ImageFolder tree (<class>/<image>, optionally under train/ and val/)"
    )
