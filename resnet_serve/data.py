"""Datasets in their real on-disk formats, and the one preprocessing that training, export
verification and the client all share (stored with every checkpoint and Triton model)."""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_serve.errors import DatasetError, ImageError

__all__ = [
    "DEFAULT_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "ImageDataset",
    "Preprocessing",
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


@dataclass
class ImageDataset:
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
) -> ImageDataset:
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
    return ImageDataset(images=images, labels=labels.astype(np.int64), class_names=list(class_names))


def load_default_dataset(
    *, split: Literal["train", "test"], folder: Path | str = DEFAULT_DATA_DIR
) -> ImageDataset:
    """Fashion-MNIST as the Debian package dataset-fashion-mnist installs it, with its class names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist`"
        )
    return load_idx_dataset(folder, split=split, class_names=FASHION_MNIST_CLASSES)


def load_dataset(folder: Path | str | None, *, split: Literal["train", "test"]) -> ImageDataset:
    """An IDX folder given by the user, or Fashion-MNIST (with its class names) when None."""
    if folder is None or Path(folder).resolve() == DEFAULT_DATA_DIR.resolve():
        return load_default_dataset(split=split)
    return load_idx_dataset(folder, split=split)


_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_PIL_MODES = {1: "L", 3: "RGB"}
# Statistics are rounded so configs stay readable; 1e-4 is far below one grey level (1/255).
_STAT_DECIMALS = 4


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become a model input: channel mode, size, then (x/255 - mean) / std.

    ``mean`` and ``std`` are per channel, on the 0..1 scale. The same definition is stored in
    checkpoints and in the Triton model config, so every stage feeds the model identically.
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so instances stay hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.channels not in _PIL_MODES:
            raise DatasetError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise DatasetError(f"preprocessing size must be positive, got {self.height}×{self.width}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DatasetError(
                f"preprocessing needs {self.channels} mean and std values, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(v) for v in self.mean) or not all(
            math.isfinite(v) and v > 0 for v in self.std
        ):
            raise DatasetError(f"preprocessing mean must be finite and std positive, got {self.mean}, {self.std}")
        if self.interpolation not in _INTERPOLATIONS:
            raise DatasetError(
                f"unknown interpolation {self.interpolation!r}; choose one of: {', '.join(_INTERPOLATIONS)}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input of one image, C×H×W."""
        return (self.channels, self.height, self.width)

    @classmethod
    def for_dataset(cls, dataset: ImageDataset, *, interpolation: str = "bilinear") -> Preprocessing:
        """The dataset's native size and channels, with mean and std measured on its images."""
        images = dataset.images if dataset.images.ndim == 4 else dataset.images[..., None]
        if len(images) == 0:
            raise DatasetError("cannot measure mean and std of an empty dataset")
        pixels = images.reshape(-1, images.shape[-1])
        # Per-channel sums in float64: a float32 accumulator drifts over tens of millions of pixels.
        mean = pixels.mean(axis=0, dtype=np.float64) / 255.0
        std = pixels.std(axis=0, dtype=np.float64) / 255.0
        return cls(
            channels=images.shape[-1],
            height=images.shape[1],
            width=images.shape[2],
            mean=tuple(round(float(v), _STAT_DECIMALS) for v in mean),
            std=tuple(round(float(v), _STAT_DECIMALS) for v in std),
            interpolation=interpolation,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """Rebuild from ``to_dict()``'s output (e.g. parsed JSON), checking every field."""
        if not isinstance(data, dict):
            raise DatasetError(f"preprocessing must be a mapping, got {type(data).__name__}")
        required = {"channels", "height", "width", "mean", "std"}
        missing = sorted(required - data.keys())
        unknown = sorted(data.keys() - required - {"interpolation"})
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
            raise DatasetError(f"invalid preprocessing: {'; '.join(problems)}")
        for key in ("channels", "height", "width"):
            if not isinstance(data[key], int) or isinstance(data[key], bool):
                raise DatasetError(f"preprocessing {key} must be an integer, got {data[key]!r}")
        for key in ("mean", "std"):
            values = data[key]
            if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise DatasetError(f"preprocessing {key} must be a list of numbers, got {values!r}")
        interpolation = data.get("interpolation", "bilinear")
        if not isinstance(interpolation, str):
            raise DatasetError(f"preprocessing interpolation must be a string, got {interpolation!r}")
        return cls(
            channels=data["channels"],
            height=data["height"],
            width=data["width"],
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=interpolation,
        )

    def _convert(self, image: np.ndarray) -> np.ndarray:
        """One uint8 H×W or H×W×C image in this channel mode and size, through PIL, so arrays
        and image files go through exactly the same conversion and resampling."""
        pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        pil = pil.convert(_PIL_MODES[self.channels])
        if pil.size != (self.width, self.height):
            pil = pil.resize((self.width, self.height), _INTERPOLATIONS[self.interpolation])
        return np.asarray(pil)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×H×W or N×H×W×C (C = 1 or 3) → contiguous float32 N×C×H×W model input.

        Images of another size or channel count are converted and resized first.
        """
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[3] not in (1, 3)
        ):
            raise ImageError(
                f"expected uint8 images N×H×W or N×H×W×C with C = 1 or 3, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        channels = 1 if images.ndim == 3 else images.shape[3]
        if images.shape[1:3] != (self.height, self.width) or channels != self.channels:
            images = np.stack([self._convert(image) for image in images]) if len(images) else (
                np.zeros((0, self.height, self.width, self.channels), np.uint8)
            )
        nhwc = images.reshape(len(images), self.height, self.width, self.channels)
        scale = (1.0 / (255.0 * np.asarray(self.std, np.float64))).astype(np.float32)
        shift = (np.asarray(self.mean, np.float64) / np.asarray(self.std, np.float64)).astype(np.float32)
        out = np.empty((len(images), self.channels, self.height, self.width), np.float32)
        for c in range(self.channels):
            np.multiply(nhwc[..., c], scale[c], out=out[:, c], dtype=np.float32)
            out[:, c] -= shift[c]
        return out

    def load_image(self, path: Path | str) -> np.ndarray:
        """Read a PNG/JPEG (any format PIL reads) into a C×H×W float32 model input."""
        path = Path(path)
        try:
            with Image.open(path) as pil:
                # Cameras store rotation as an EXIF tag rather than rotating the pixels.
                pil = ImageOps.exif_transpose(pil)
                pil = pil.convert(_PIL_MODES[self.channels])
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path.name}: not a readable image ({exc})") from None
        array = np.asarray(pil)
        return self.normalize(array[None])[0]
