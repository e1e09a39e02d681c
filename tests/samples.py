"""Real inputs shared by the test modules: Fashion-MNIST test images (the Debian package that
`make test` installs), a ResNet-20 for them whose BatchNorms hold realistic statistics, and an
ImageFolder tree of photos. Photo crops and realistic weights for ImageNet-sized nets are in
``resnet_serve.samples``, which the benchmarks use too."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from resnet_serve.datasets import InMemoryDataset, load_default_dataset
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.samples import photo_crops, with_realistic_batchnorm

if TYPE_CHECKING:
    from resnet_serve.checkpoints import CheckpointMeta

_IDX_DTYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}

FASHION_PREPROCESSING = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))


@lru_cache(maxsize=1)
def fashion_test_set() -> InMemoryDataset:
    return load_default_dataset(split="test")


@lru_cache(maxsize=1)
def fashion_train_set() -> InMemoryDataset:
    """All 60,000 training images, read once for the training tests (about 2 s each time otherwise)."""
    return load_default_dataset(split="train")


def fashion_mnist(count: int) -> np.ndarray:
    """The first ``count`` Fashion-MNIST test images, normalised, float32 (N, 1, 28, 28)."""
    return FASHION_PREPROCESSING.normalize(fashion_test_set().images[:count])


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, extra: bytes = b"") -> Path:
    """An IDX file exactly as the MNIST distribution lays it out: magic, big-endian dims, data."""
    header = magic or bytes([0, 0, _IDX_DTYPE_CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes() + extra
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def fashion_idx_folder(folder: Path, *, train: int, test: int) -> Path:
    """An IDX folder laid out like Fashion-MNIST's, of its first ``train`` training and
    ``test`` test images: training runs that only check what they record need not validate
    on all 10,000 test images."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, dataset, count in (("train", fashion_train_set(), train), ("t10k", fashion_test_set(), test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", dataset.images[:count])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", dataset.labels[:count].astype(np.uint8))
    return folder


def photo_image_folder(root: Path, *, classes: int, per_class: int, size: int) -> Path:
    """An ImageFolder tree of real photo crops (PNG, size×size) under ``root/val/<class>/``,
    which is what the ``test`` split of an ImageFolder tree reads."""
    from PIL import Image

    crops = photo_crops(classes * per_class, size=size)
    for index, crop in enumerate(crops):
        folder = root / "val" / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{index:03d}.png")
    return root


def fashion_resnet20(*, seed: int) -> tuple[nn.Module, CheckpointMeta]:
    """An untrained ResNet-20 for Fashion-MNIST whose BatchNorms hold statistics of real test
    images, with the metadata a checkpoint of it carries."""
    from resnet_serve.checkpoints import CheckpointMeta
    from resnet_serve.models import create_model

    torch.manual_seed(seed)
    model = with_realistic_batchnorm(create_model("resnet20", in_channels=1), torch.from_numpy(fashion_mnist(32)), seed=seed)
    meta = CheckpointMeta(
        architecture="resnet20", num_classes=10, in_channels=1,
        class_names=[f"class {i}" for i in range(10)], preprocessing=FASHION_PREPROCESSING,
    )
    return model, meta


# The classes of write_photo_folder: one scikit-image photo each, so a small net can tell them apart.
PHOTO_FOLDER_CLASSES = ("astronaut", "chelsea", "coffee", "rocket")


def write_photo_folder(root: Path, *, per_class: int, sides: tuple[int, int], seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.jpg`` of real photos in JPEG, of mixed sizes and
    aspect ratios: each image a random crop (half to all of each side) of its class's photo,
    scaled so its shorter side is drawn from ``sides``."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in PHOTO_FOLDER_CLASSES:
        photo = Image.fromarray(getattr(skimage.data, name)())
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            width, height = int(photo.width * rng.uniform(0.5, 1)), int(photo.height * rng.uniform(0.5, 1))
            left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
            crop = photo.crop((left, top, left + width, top + height))
            scale = int(rng.integers(sides[0], sides[1] + 1)) / min(crop.size)
            crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
            crop.save(root / name / f"{index}.jpg", quality=90)
    return root
