"""Which images train and which validate: the ``val/`` folder, or a seeded stratified split of a
folder without one; and ``--limit``, a seeded stratified sample of the training images.

Both are drawn from the labels alone, before any image is decoded, so choosing 1,000 photos of
a million-photo folder opens 1,000 files, and neither depends on how many processes read them.
The two draws use distinct random streams of the run's seed: ``--limit`` never changes which
images validate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_serve.datasets import Dataset, ImageFolder, load_dataset, load_image_folder
from resnet_serve.datasets.image_folder import has_split_folders, has_test_folder
from resnet_serve.errors import DatasetError
from resnet_serve.training.recipes import TrainConfig

__all__ = ["Splits", "limited", "load_splits", "stratified_sample", "stratified_split"]


def stratified_sample(labels: np.ndarray, count: int, *, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted indices of ``count`` images drawn at random (seeded) so that each class keeps its
    share: class c gets count × n_c / N of them, rounded by largest remainder, so the sample is
    exactly ``count`` (all images when ``count`` ≥ N)."""
    total = len(labels)
    if count >= total:
        return np.arange(total)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / total
    quota = np.floor(exact).astype(np.int64)
    # Stable: equal remainders go to the lower class index, so the sample depends on the seed alone.
    quota[np.argsort(-(exact - quota), kind="stable")[: count - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(chosen))


def stratified_split(
    labels: np.ndarray, fraction: float, *, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a seeded stratified ``fraction`` of the images (at least one)
    validates, the rest train; no image is in both."""
    val = stratified_sample(labels, max(1, round(fraction * len(labels))), seed=seed)
    return np.setdiff1d(np.arange(len(labels)), val, assume_unique=True), val


# Distinct streams for the two draws, so that --limit never changes which images validate.
_SPLIT_STREAM, _LIMIT_STREAM = 0, 1


@dataclass(frozen=True)
class Splits:
    """The images a run trains on and those it validates on, and how they were chosen."""

    train: Dataset
    val: Dataset
    held_out: str  # how the validation images were found, for the run's record


def _subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    return dataset.subset(indices) if isinstance(dataset, ImageFolder) else dataset.to_memory(indices)


def load_splits(path: Path | str | None, *, config: TrainConfig) -> Splits:
    """Open ``path`` (see ``load_dataset``) as a training split and a validation split.

    IDX and CIFAR validate on their test split; an ImageFolder tree on its ``val/`` (or
    ``test/``) folder, or, without one, on a seeded stratified ``config.val_split`` of its
    images, which then never train. (``config.limit`` is applied by the run, to the training
    split: it never changes which images validate.)
    """
    train = load_dataset(path, split="train")
    if isinstance(train, ImageFolder):
        root = Path(path)  # an ImageFolder is never the default dataset
        if has_split_folders(root) and has_test_folder(root):
            val: Dataset = load_image_folder(root, split="test")
            held_out = "the val/ folder"
        else:
            train_indices, val_indices = stratified_split(
                train.labels, config.val_split, seed=(config.seed, _SPLIT_STREAM)
            )
            train, val = train.subset(train_indices), train.subset(val_indices)
            held_out = f"a seeded stratified {config.val_split:.0%} of the images"
    else:
        val = load_dataset(path, split="test")
        held_out = "the test split"
    if train.class_names != val.class_names:
        raise DatasetError(
            f"the training and validation images have different classes: {train.class_names} and {val.class_names}"
        )
    if len(train) == 0 or len(val) == 0:
        raise DatasetError(f"{path}: no {'training' if len(train) == 0 else 'validation'} images")
    return Splits(train=train, val=val, held_out=held_out)


def limited(train: Dataset, config: TrainConfig) -> Dataset:
    """The training images a run uses: all, or a seeded stratified sample of ``config.limit``
    of them, chosen from the labels before any image is decoded."""
    if config.limit is None or config.limit >= len(train):
        return train
    return _subset(train, stratified_sample(train.labels, config.limit, seed=(config.seed, _LIMIT_STREAM)))
