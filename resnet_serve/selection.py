"""Which real images check a model and which calibrate its INT8 copy: one policy, shared by
``export``, ``verify`` and ``fold``, so that what verify measures is what export serves.

Verification uses the first ``verify_images`` images of the test split (val/ for ImageFolder
trees): a fixed, reproducible set. Calibration draws ``calibration_images`` from the training
split by a seeded sample without replacement, because an ImageFolder tree is sorted by class:
its first N images would all be one class, and ranges calibrated on them would miss the rest.

Every dataset access of the export and verification stages goes through this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_serve.datasets import Dataset, batches, load_dataset
from resnet_serve.errors import DatasetError
from resnet_serve.preprocessing import Preprocessing

__all__ = [
    "ImageSelection",
    "LabelledImages",
    "calibration_images",
    "verification_chunks",
    "verification_images",
]


@dataclass(frozen=True)
class ImageSelection:
    """The images of one dataset that verify and calibrate a model.

    Attributes:
        data_dir: an IDX folder, a CIFAR archive or folder, or an ImageFolder tree; None is
            the installed Fashion-MNIST.
        verify_images: how many test images (the first ones) check each step.
        calibration_images: how many training images calibrate INT8 (fewer if the split is
            smaller).
        calibration_seed: the seed of the calibration sample.

    Raises:
        DatasetError: a count below 1.
    """

    data_dir: Path | None = None
    verify_images: int = 256
    calibration_images: int = 512
    calibration_seed: int = 0

    def __post_init__(self) -> None:
        if self.verify_images < 1 or self.calibration_images < 1:
            raise DatasetError(
                f"image counts must be ≥ 1, got {self.verify_images} verification and "
                f"{self.calibration_images} calibration images"
            )


@dataclass(frozen=True)
class LabelledImages:
    """Model inputs (float32 N×C×H×W) and their class indices (int64, N)."""

    images: np.ndarray
    labels: np.ndarray


def verification_images(selection: ImageSelection, preprocessing: Preprocessing) -> LabelledImages:
    """The selected test images, prepared as ``preprocessing`` says, with their labels."""
    test_set, chosen = _verification_set(selection)
    return LabelledImages(images=test_set.read(chosen, preprocessing=preprocessing), labels=test_set.labels[chosen])


def verification_chunks(
    selection: ImageSelection, preprocessing: Preprocessing, *, chunk_size: int
) -> Iterator[LabelledImages]:
    """The selected test images in chunks of ``chunk_size`` (the last may be smaller), each
    read from disk and prepared only when it is reached, so that memory holds one chunk."""
    test_set, chosen = _verification_set(selection)
    for images, labels in batches(test_set, preprocessing=preprocessing, batch_size=chunk_size, indices=chosen):
        yield LabelledImages(images=images, labels=labels)


def calibration_images(selection: ImageSelection, preprocessing: Preprocessing) -> np.ndarray:
    """The calibration sample of the training split, in dataset order, prepared as
    ``preprocessing`` says (float32 N×C×H×W)."""
    train_set = load_dataset(selection.data_dir, split="train")
    count = min(selection.calibration_images, len(train_set))
    rng = np.random.default_rng(selection.calibration_seed)
    chosen = np.sort(rng.choice(len(train_set), size=count, replace=False))
    return train_set.read(chosen, preprocessing=preprocessing)


def _verification_set(selection: ImageSelection) -> tuple[Dataset, range]:
    test_set = load_dataset(selection.data_dir, split="test")
    return test_set, range(min(selection.verify_images, len(test_set)))
