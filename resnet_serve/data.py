"""Datasets in their real on-disk formats, and the one preprocessing that training, export
verification and the client all share (stored with every checkpoint and Triton model)."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_serve.errors import DatasetError, ImageError, ResnetServeError

__all__ = [
    "DEFAULT_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "Preprocessing",
    "load_cifar_dataset",
    "load_dataset",
    "load_default_dataset",
    "load_idx_dataset",
    "load_image_folder",
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


# --- CIFAR-10 / CIFAR-100, as the "python version" archives from cs.toronto.edu ship them ---


@dataclass(frozen=True)
class _CifarLayout:
    """Where one CIFAR variant keeps its batches, and which pickle keys hold labels and names."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels_key: str
    names_key: str

    def batches(self, split: str) -> tuple[str, ...]:
        return self.train if split == "train" else self.test


_CIFAR_LAYOUTS = (
    _CifarLayout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        labels_key="labels",
        names_key="label_names",
    ),
    _CifarLayout(
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        labels_key="fine_labels",
        names_key="fine_label_names",
    ),
)
_CIFAR_SIDE = 32
_CIFAR_EXPECTED = (
    "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) or cifar-100-python/ (train, test, meta)"
)

# Unpickling runs whatever callables a file names, so only the ones a real CIFAR batch needs to
# rebuild its uint8 `data` array are allowed. Python 2's numpy wrote `numpy.core`; numpy 2
# renamed it `numpy._core`, so a batch re-saved today names that one.
_CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, source: str) -> None:
        # The batches were pickled by Python 2: its byte strings (keys, names and the array's
        # raw pixels) decode 1:1 as latin1, which numpy requires to rebuild the array.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise DatasetError(
                f"{self._source}: refusing to unpickle {module}.{name}; "
                "a CIFAR batch holds only dicts, lists, strings and a numpy array"
            )
        return super().find_class(module, name)


def _unpickle_cifar(raw: bytes, *, source: str) -> dict[str, Any]:
    try:
        loaded = _CifarUnpickler(io.BytesIO(raw), source=source).load()
    except DatasetError:
        raise
    # A damaged pickle can fail with almost any exception type (EOFError, ValueError,
    # struct.error, UnicodeDecodeError, ...); all of them mean the same to the user.
    except Exception as exc:
        raise DatasetError(f"{source}: not a CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise DatasetError(f"{source}: expected a pickled dict, got {type(loaded).__name__}")
    # Read with encoding="bytes" elsewhere, or re-saved by Python 3, keys may be bytes.
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def _cifar_batch(raw: bytes, *, source: str, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → N×32×32×3 uint8 images and int64 labels."""
    batch = _unpickle_cifar(raw, source=source)
    data, labels = batch.get("data"), batch.get(layout.labels_key)
    pixels = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == pixels):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(
            f"{source}: expected 'data' as a uint8 N×{pixels} array and '{layout.labels_key}', "
            f"found keys {sorted(map(str, batch))} and data {found}"
        )
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
        isinstance(label, int) for label in labels
    ):
        raise DatasetError(f"{source}: expected '{layout.labels_key}' as a list of {len(data)} integers")
    # Each row is the red plane, then green, then blue (C×H×W); ImageDataset is H×W×C.
    # Copied contiguous here: np.concatenate would keep the transposed (strided) layout.
    images = np.ascontiguousarray(data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1))
    return images, np.asarray(labels, np.int64)


def _cifar_class_names(raw: bytes, *, source: str, layout: _CifarLayout) -> list[str]:
    names = _unpickle_cifar(raw, source=source).get(layout.names_key)
    if not isinstance(names, list) or not all(isinstance(name, (str, bytes)) for name in names):
        raise DatasetError(f"{source}: expected '{layout.names_key}' as a list of class names")
    return [name.decode("latin1") if isinstance(name, bytes) else name for name in names]


def _cifar_folder_layout(folder: Path) -> tuple[Path, _CifarLayout] | None:
    """The extracted CIFAR folder at or directly under ``folder``, and its variant."""
    for candidate in (folder, *(folder / layout.folder for layout in _CIFAR_LAYOUTS)):
        for layout in _CIFAR_LAYOUTS:
            if (candidate / layout.meta).is_file() and any(
                (candidate / name).is_file() for name in layout.train + layout.test
            ):
                return candidate, layout
    return None


def _read_cifar_folder(folder: Path, *, split: str) -> tuple[_CifarLayout, dict[str, bytes], str]:
    found = _cifar_folder_layout(folder)
    if found is None:
        raise DatasetError(f"{folder}: not an extracted CIFAR folder; expected {_CIFAR_EXPECTED}")
    folder, layout = found
    members: dict[str, bytes] = {}
    for name in (layout.meta, *layout.batches(split)):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder}: no {name}; expected {_CIFAR_EXPECTED}")
        members[name] = (folder / name).read_bytes()
    return layout, members, f"{folder}/"


def _read_cifar_archive(archive: Path, *, split: str) -> tuple[_CifarLayout, dict[str, bytes], str]:
    wanted = {
        f"{layout.folder}/{name}": (layout, name)
        for layout in _CIFAR_LAYOUTS
        for name in (layout.meta, *layout.batches(split))
    }
    members: dict[str, bytes] = {}
    layouts: set[_CifarLayout] = set()
    try:
        # Stream mode decompresses the .tar.gz once, front to back, and nothing touches the disk.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and member.name in wanted:
                    layout, name = wanted[member.name]
                    extracted = tar.extractfile(member)
                    assert extracted is not None  # isfile() members always have a payload
                    members[name] = extracted.read()
                    layouts.add(layout)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{archive}: not a readable tar archive ({exc})") from None
    if len(layouts) != 1:
        raise DatasetError(
            f"{archive}: not a CIFAR archive; expected members under {_CIFAR_EXPECTED}"
        )
    (layout,) = layouts
    missing = [name for name in (layout.meta, *layout.batches(split)) if name not in members]
    if missing:
        raise DatasetError(f"{archive}: no {layout.folder}/{missing[0]} in the archive")
    return layout, members, f"{archive}:{layout.folder}/"


def load_cifar_dataset(path: Path | str, *, split: Literal["train", "test"]) -> ImageDataset:
    """Load one split of CIFAR-10 or CIFAR-100 (fine labels) in the official "python version".

    Args:
        path: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (read in memory, not
            extracted), the extracted ``cifar-10-batches-py/`` / ``cifar-100-python/`` folder,
            or the folder holding it.
        split: "train" (50,000 images) or "test" (10,000 images).

    Returns:
        N×32×32×3 uint8 images with the class names from the archive's meta file.
    """
    path = Path(path)
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; choose 'train' or 'test'")
    if path.is_dir():
        layout, members, prefix = _read_cifar_folder(path, split=split)
    elif path.is_file():
        layout, members, prefix = _read_cifar_archive(path, split=split)
    else:
        raise DatasetError(f"{path}: no such file or folder")
    class_names = _cifar_class_names(members.pop(layout.meta), source=prefix + layout.meta, layout=layout)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for name in layout.batches(split):
        source = prefix + name
        # pop: each batch's raw bytes are freed as soon as it is decoded.
        batch_images, batch_labels = _cifar_batch(members.pop(name), source=source, layout=layout)
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= len(class_names)):
            raise DatasetError(
                f"{source}: labels span {batch_labels.min()}..{batch_labels.max()} "
                f"but {layout.meta} names {len(class_names)} classes"
            )
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageDataset(images=np.concatenate(images), labels=np.concatenate(labels), class_names=class_names)


# --- ImageFolder trees: <root>/<class>/<image>, optionally under <root>/train and <root>/val ---

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_IMAGE_FOLDER_SPLITS = ("train", "val", "test")


def _visible(folder: Path) -> list[Path]:
    # Hidden entries (.DS_Store, .ipynb_checkpoints) are tool droppings, never data.
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _class_folders(root: Path) -> list[Path]:
    return [entry for entry in _visible(root) if entry.is_dir()]


def _has_split_folders(root: Path) -> bool:
    return any((root / split).is_dir() and _class_folders(root / split) for split in _IMAGE_FOLDER_SPLITS)


def load_image_folder(
    root: Path | str,
    *,
    split: Literal["train", "val", "test"] | None = None,
    resize: int | None = None,
    crop: int | tuple[int, int] | None = None,
) -> ImageDataset:
    """Load an ImageFolder tree: one folder per class (names sorted → labels), images inside.

    Args:
        root: holds the class folders, or ``train/`` and ``val/`` (``test/``) that do.
        split: which of ``root``'s split folders to read; None reads ``root`` itself. "test"
            falls back to ``val/``, since ImageNet's labelled evaluation set is its val split.
        resize: scale each image so its shorter side has this length, keeping aspect ratio.
        crop: then cut the centre height×width (an int for a square).
            Without resize and crop every image must already have the same size.

    Returns:
        N×H×W×3 uint8 RGB images (grayscale and palette files are converted).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    if split is not None:
        if split not in _IMAGE_FOLDER_SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of: {', '.join(_IMAGE_FOLDER_SPLITS)}")
        candidates = [split, "val"] if split == "test" else [split]
        folder = next((root / name for name in candidates if (root / name).is_dir()), None)
        if folder is None:
            raise DatasetError(f"{root}: no {' or '.join(f'{name}/' for name in candidates)} folder")
        root = folder
    crop_size = (crop, crop) if isinstance(crop, int) else crop
    if (resize is not None and resize < 1) or (crop_size is not None and min(crop_size) < 1):
        raise DatasetError(f"resize and crop must be positive, got {resize} and {crop}")

    classes = _class_folders(root)
    if not classes:
        raise DatasetError(f"{root}: no class folders; expected <class>/<image> files")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_folder in enumerate(classes):
        entries = _visible(class_folder)
        for entry in entries:
            if not entry.is_file() or entry.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DatasetError(
                    f"{entry}: not an image file; expected only {', '.join(sorted(IMAGE_EXTENSIONS))} "
                    "files in a class folder"
                )
        if not entries:
            raise DatasetError(f"{class_folder}: empty class folder; expected its images")
        files += entries
        labels += [label] * len(entries)

    # Filled image by image, so memory holds the decoded dataset and one image, not every file.
    images: np.ndarray | None = None
    for index, file in enumerate(files):
        pil = _open_image(file, mode="RGB", shown=str(file), error=DatasetError)
        pil = _resize_and_crop(
            pil, resize=resize, crop=crop_size, resample=Image.Resampling.BILINEAR, shown=str(file)
        )
        if images is None:
            images = np.empty((len(files), pil.height, pil.width, 3), np.uint8)
        elif (pil.height, pil.width) != images.shape[1:3]:
            raise DatasetError(
                f"{file}: {pil.width}×{pil.height} after resize/crop, but {files[0].name} is "
                f"{images.shape[2]}×{images.shape[1]}; give resize and crop to bring images to one size"
            )
        images[index] = np.asarray(pil)
    assert images is not None  # classes are never empty, so at least one image was read
    return ImageDataset(images=images, labels=np.asarray(labels, np.int64), class_names=[c.name for c in classes])


# --- Images read and resized the same way by datasets and by Preprocessing ---


def _open_image(path: Path, *, mode: str, shown: str, error: type[ResnetServeError]) -> Image.Image:
    """Decode an image file in ``mode``; ``shown`` names it in errors of type ``error``."""
    try:
        with Image.open(path) as pil:
            # Cameras store rotation as an EXIF tag rather than rotating the pixels.
            return ImageOps.exif_transpose(pil).convert(mode)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise error(f"{shown}: not a readable image ({exc})") from None


def _resize_and_crop(
    pil: Image.Image,
    *,
    resize: int | None,
    crop: tuple[int, int] | None,
    resample: Image.Resampling,
    shown: str,
) -> Image.Image:
    """Shorter side to ``resize``, then the centre ``crop`` (height, width): the ImageNet
    evaluation transform, with torchvision's rounding so accuracies stay comparable."""
    if resize is not None:
        width, height = pil.size
        if width <= height:
            size = (resize, int(resize * height / width))
        else:
            size = (int(resize * width / height), resize)
        if size != pil.size:
            pil = pil.resize(size, resample)
    if crop is not None:
        crop_height, crop_width = crop
        if crop_height > pil.height or crop_width > pil.width:
            raise DatasetError(
                f"{shown}: {pil.width}×{pil.height} is smaller than the {crop_width}×{crop_height} crop; "
                "resize it to at least the crop size first"
            )
        top = int(round((pil.height - crop_height) / 2.0))
        left = int(round((pil.width - crop_width) / 2.0))
        pil = pil.crop((left, top, left + crop_width, top + crop_height))
    return pil


# --- One entry point that recognizes the format ---


def _has_idx_files(folder: Path) -> bool:
    return any(
        (folder / f"{prefix}-images-idx3-ubyte{suffix}").is_file()
        for prefix in ("train", "t10k")
        for suffix in ("", ".gz")
    )


def load_dataset(path: Path | str | None, *, split: Literal["train", "test"]) -> ImageDataset:
    """Load a dataset in whichever supported format ``path`` holds.

    None (or the installed Fashion-MNIST folder) → Fashion-MNIST with its class names; a folder
    of IDX files → :func:`load_idx_dataset`; a CIFAR archive or extracted folder →
    :func:`load_cifar_dataset`; a tree of class folders (optionally under ``train/`` and
    ``val/``) → :func:`load_image_folder`, which needs images of one size.
    """
    if path is None or Path(path).resolve() == DEFAULT_DATA_DIR.resolve():
        return load_default_dataset(split=split)
    path = Path(path)
    if path.is_file():
        if tarfile.is_tarfile(path):
            return load_cifar_dataset(path, split=split)
        found = "a file that is not a tar archive"
    elif path.is_dir():
        if _has_idx_files(path):
            return load_idx_dataset(path, split=split)
        if _cifar_folder_layout(path) is not None:
            return load_cifar_dataset(path, split=split)
        if _has_split_folders(path):
            return load_image_folder(path, split=split)
        if _class_folders(path):
            return load_image_folder(path)
        entries = [entry.name for entry in _visible(path)]
        more = ", ..." if len(entries) > 3 else ""
        found = f"a folder with {', '.join(entries[:3])}{more}" if entries else "an empty folder"
    else:
        raise DatasetError(f"{path}: no such file or folder")
    raise DatasetError(
        f"{path}: {found}; expected an IDX folder (train-images-idx3-ubyte[.gz], ...), "
        "a CIFAR archive or folder (cifar-10-python.tar.gz, cifar-10-batches-py/, cifar-100-python/) "
        "or an ImageFolder tree (<class>/<image>, optionally under train/ and val/)"
    )


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

    ``mean`` and ``std`` are per channel, on the 0..1 scale. Images are resized straight to
    height×width, or, when ``resize`` is set, their shorter side is resized to it and the centre
    height×width cropped (the ImageNet evaluation transform, e.g. resize 256 → crop 224). The
    same definition is stored in checkpoints and in the Triton model config, so every stage
    feeds the model identically.
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    resize: int | None = None

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
        # The shorter side must cover the crop, or the centre crop would run off the image.
        if self.resize is not None and self.resize < max(self.height, self.width):
            raise DatasetError(
                f"preprocessing resize must be at least the {self.height}×{self.width} crop, got {self.resize}"
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
        data: dict[str, Any] = {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }
        # Omitted when unset, so configs written before resize existed stay byte-identical.
        if self.resize is not None:
            data["resize"] = self.resize
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """Rebuild from ``to_dict()``'s output (e.g. parsed JSON), checking every field."""
        if not isinstance(data, dict):
            raise DatasetError(f"preprocessing must be a mapping, got {type(data).__name__}")
        required = {"channels", "height", "width", "mean", "std"}
        missing = sorted(required - data.keys())
        unknown = sorted(data.keys() - required - {"interpolation", "resize"})
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
            raise DatasetError(f"invalid preprocessing: {'; '.join(problems)}")
        for key in ("channels", "height", "width", "resize"):
            value = data.get(key)
            if (key != "resize" or value is not None) and (not isinstance(value, int) or isinstance(value, bool)):
                raise DatasetError(f"preprocessing {key} must be an integer, got {value!r}")
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
            resize=data.get("resize"),
        )

    def _convert(self, image: np.ndarray) -> np.ndarray:
        """One uint8 H×W or H×W×C image in this channel mode and size, through PIL, so arrays
        and image files go through exactly the same conversion and resampling."""
        pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        pil = pil.convert(_PIL_MODES[self.channels])
        resample = _INTERPOLATIONS[self.interpolation]
        if self.resize is not None:
            pil = _resize_and_crop(
                pil, resize=self.resize, crop=(self.height, self.width), resample=resample, shown="image"
            )
        elif pil.size != (self.width, self.height):
            pil = pil.resize((self.width, self.height), resample)
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
        # With resize set even an image of the crop size is scaled first, as torchvision does.
        if self.resize is not None or images.shape[1:3] != (self.height, self.width) or channels != self.channels:
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
        pil = _open_image(path, mode=_PIL_MODES[self.channels], shown=path.name, error=ImageError)
        return self.normalize(np.asarray(pil)[None])[0]
