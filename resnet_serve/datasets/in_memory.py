"""Labelled uint8 images held in memory: what the IDX and CIFAR readers give, and what
training needs (every image at one size, for batches drawn at random and for statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from resnet_serve.errors import DatasetError
from resnet_serve.preprocessing import Preprocessing

__all__ = ["InMemoryDataset", "checked_indices"]


def checked_indices(indices: Sequence[int] | np.ndarray, length: int) -> np.ndarray:
    """``indices`` as a 1-D integer array, each in 0..length-1: numpy would wrap a negative index
    and a list would silently accept one, so both are refused here."""
    chosen = np.asarray(indices)
    if chosen.size == 0:
        return np.zeros(0, np.intp)
    if chosen.ndim != 1 or not np.issubdtype(chosen.dtype, np.integer):
        raise DatasetError(f"image indices must be a sequence of integers, got {chosen.dtype} {chosen.shape}")
    if chosen.min() < 0 or chosen.max() >= length:
        raise DatasetError(f"image indices span {chosen.min()}..{chosen.max()}, but the dataset has {length} images")
    return chosen.astype(np.intp, copy=False)


@dataclass
class InMemoryDataset:
    """Labelled images in memory.

    ``images`` is uint8, N×H×W (grayscale) or N×H×W×C; ``labels`` is int64 of length N, each an
    index into ``class_names``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise DatasetError(
                f"images must be uint8 N×H×W or N×H×W×C, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise DatasetError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DatasetError(
                f"labels span {self.labels.min()}..{self.labels.max()} "
                f"but there are {len(self.class_names)} class names"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[3]

    def read(self, indices: Sequence[int] | np.ndarray, *, preprocessing: Preprocessing) -> np.ndarray:
        """The images at ``indices`` as float32 N×C×H×W model input, prepared by ``preprocessing``."""
        return preprocessing.normalize(self.images[checked_indices(indices, len(self))])

    def to_memory(self, indices: Sequence[int] | np.ndarray | None = None) -> InMemoryDataset:
        """This dataset (``indices`` None), or the images at ``indices`` as a new one."""
        if indices is None:
            return self
        chosen = checked_indices(indices, len(self))
        return InMemoryDataset(images=self.images[chosen], labels=self.labels[chosen], class_names=self.class_names)
