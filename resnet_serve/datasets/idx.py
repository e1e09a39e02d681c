"""The MNIST family's IDX files, and Fashion-MNIST where the Debian package installs them."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Literal

import numpy as np

from resnet_serve.datasets.in_memory import InMemoryDataset
from resnet_serve.errors import DatasetError

__all__ = [
    "DEFAULT_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "is_idx_folder",
    "load_default_dataset",
    "load_idx_dataset",
    "read_idx",
]

# Where the Debian package dataset-fashion-mnist puts the four IDX files.
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The IDX header's third byte names the element type; all multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path | str, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST family's format), plain or gzip-compressed.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.
        ndim: the number of dimensions the caller expects (1 for labels, 3 for images);
            None accepts any.

    Returns:
        The array in native byte order, shaped as the header declares.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: not a readable gzip file ({exc})") from None

    if len(raw) < 4:
        raise DatasetError(f"{path}: not an IDX file ({len(raw)} bytes, shorter than its header)")
    magic = int.from_bytes(raw[:4], "big")
    dtype_code, file_ndim = raw[2], raw[3]
    expected_magic = f"0x000008{ndim:02x}" if ndim is not None else "0x0000TTNN"
    if raw[0] != 0 or raw[1] != 0 or dtype_code not in _IDX_DTYPES or file_ndim == 0:
        raise DatasetError(f"{path}: not an IDX file (magic 0x{magic:08x}, expected {expected_magic})")
    if ndim is not None and file_ndim != ndim:
        raise DatasetError(
            f"{path}: IDX file has {file_ndim} dimensions (magic 0x{magic:08x}, expected {expected_magic})"
        )

    header_size = 4 + 4 * file_ndim
    if len(raw) < header_size:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header_size})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(file_ndim))
    dtype = _IDX_DTYPES[dtype_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        shape = "×".join(map(str, dims))
        raise DatasetError(
            f"{path}: IDX header declares {shape} {dtype.name} ({expected} bytes of data), "
            f"the file holds {actual}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder}: no {stem} or {stem}.gz")


def load_idx_dataset(
    folder: Path | str,
    *,
    split: Literal["train", "test"],
    class_names: list[str] | tuple[str, ...] | None = None,
) -> InMemoryDataset:
    """Load one split of an MNIST-family dataset from its IDX files.

    Args:
        folder: holds ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``
            (or the ``t10k-`` pair for the test split).
        split: "train" or "test".
        class_names: one name per label; defaults to the labels themselves ("0", "1", ...).
    """
    folder = Path(folder)
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; choose 'train' or 'test'")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{folder}: expected uint8 images and labels, got {images.dtype} and {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{folder}: {images_path.name} has {len(images)} images "
            f"but {labels_path.name} has {len(labels)} labels"
        )
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    return InMemoryDataset(images=images, labels=labels.astype(np.int64), class_names=list(class_names))


def load_default_dataset(
    *, split: Literal["train", "test"], folder: Path | str = DEFAULT_DATA_DIR
) -> InMemoryDataset:
    """Fashion-MNIST as the Debian package dataset-fashion-mnist installs it, with its class names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist`"
        )
    return load_idx_dataset(folder, split=split, class_names=FASHION_MNIST_CLASSES)


def is_idx_folder(folder: Path) -> bool:
    """Whether ``folder`` holds the images file of either IDX split."""
    return any(
        (folder / f"{prefix}-images-idx3-ubyte{suffix}").is_file()
        for prefix in ("train", "t10k")
        for suffix in ("", ".gz")
    )
