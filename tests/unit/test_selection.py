"""One image-selection policy: the first test images verify, a seeded sample of the training
split calibrates, on real Fashion-MNIST and on a real ImageFolder tree sorted by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from samples import FASHION_PREPROCESSING, fashion_test_set

from resnet_serve.datasets import load_default_dataset
from resnet_serve.errors import DatasetError
from resnet_serve.selection import ImageSelection, calibration_images, verification_chunks, verification_images


def test_verification_takes_the_first_test_images_with_their_labels() -> None:
    selected = verification_images(ImageSelection(verify_images=40), FASHION_PREPROCESSING)
    test_set = fashion_test_set()
    assert selected.images.shape == (40, 1, 28, 28) and selected.images.dtype == np.float32
    assert np.array_equal(selected.images, FASHION_PREPROCESSING.normalize(test_set.images[:40]))
    assert np.array_equal(selected.labels, test_set.labels[:40])


def test_chunks_are_the_same_images_prepared_a_chunk_at_a_time() -> None:
    selection = ImageSelection(verify_images=50)
    whole = verification_images(selection, FASHION_PREPROCESSING)
    chunks = list(verification_chunks(selection, FASHION_PREPROCESSING, chunk_size=16))
    assert [len(c.images) for c in chunks] == [16, 16, 16, 2]
    assert np.array_equal(np.concatenate([c.images for c in chunks]), whole.images)
    assert np.array_equal(np.concatenate([c.labels for c in chunks]), whole.labels)


def test_calibration_is_a_seeded_sample_of_the_training_split() -> None:
    selection = ImageSelection(calibration_images=64)
    first = calibration_images(selection, FASHION_PREPROCESSING)
    other_seed = calibration_images(ImageSelection(calibration_images=64, calibration_seed=1), FASHION_PREPROCESSING)

    assert first.shape == (64, 1, 28, 28)
    assert not np.array_equal(first, other_seed)
    # The documented rule: numpy's seeded choice without replacement, in dataset order.
    chosen = np.sort(np.random.default_rng(0).choice(60_000, size=64, replace=False))
    train = load_default_dataset(split="train")
    assert np.array_equal(first, FASHION_PREPROCESSING.normalize(train.images[chosen]))
    assert chosen[-1] > 10 * 64  # drawn from the whole split, not its head


def _image_folder(root: Path, *, classes: int, per_class: int) -> Path:
    """A real ImageFolder tree: Fashion-MNIST training images as PNG files, one folder per class."""
    train = load_default_dataset(split="train")
    for label in range(classes):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for index in np.flatnonzero(train.labels == label)[:per_class]:
            Image.fromarray(train.images[index]).save(folder / f"{index}.png")
    return root


def test_calibration_covers_every_class_of_a_tree_sorted_by_class(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, classes=4, per_class=20)
    preprocessing = FASHION_PREPROCESSING
    selected = calibration_images(ImageSelection(data_dir=root, calibration_images=16), preprocessing)

    train = load_default_dataset(split="train")
    class_of = {preprocessing.normalize(train.images[i : i + 1]).tobytes(): int(train.labels[i])
                for label in range(4) for i in np.flatnonzero(train.labels == label)[:20]}
    classes = {class_of[image[None].tobytes()] for image in selected}
    # The first 16 files of the tree would all be class 0.
    assert classes == {0, 1, 2, 3}


@pytest.mark.parametrize("counts", [{"verify_images": 0}, {"calibration_images": -1}])
def test_counts_below_one_are_refused(counts: dict) -> None:
    with pytest.raises(DatasetError, match="image counts must be ≥ 1"):
        ImageSelection(**counts)
