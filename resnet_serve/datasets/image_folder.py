"""ImageFolder trees, ``<root>/<class>/<image>``, optionally under ``train/`` and ``val/``.

Only the file list and labels are held; images are decoded when they are read, so an
ImageNet-val-sized folder (50,000 JPEGs) is streamed through evaluation and verification in
bounded memory. Reading for a model applies that model's preprocessing (shorter-side resize
and centre crop), so images of any size and aspect ratio fit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from PIL import Image

from resnet_serve.datasets.in_memory import InMemoryDataset, checked_indices
from resnet_serve.errors import DatasetError, ImageError
from resnet_serve.preprocessing import Preprocessing, decode_image, resize_and_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "has_class_folders",
    "has_split_folders",
    "has_test_folder",
    "load_image_folder",
    "prepare_image_file",
    "read_image_file",
    "visible_entries",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_IMAGE_FOLDER_SPLITS = ("train", "val", "test")

_Decoded = TypeVar("_Decoded")


def visible_entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted, without hidden ones (.DS_Store, .ipynb_checkpoints),
    which are tool droppings, never data."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _class_folders(root: Path) -> list[Path]:
    return [entry for entry in visible_entries(root) if entry.is_dir()]


def has_class_folders(root: Path) -> bool:
    return bool(_class_folders(root))


def has_split_folders(root: Path) -> bool:
    return any((root / split).is_dir() and _class_folders(root / split) for split in _IMAGE_FOLDER_SPLITS)


def has_test_folder(root: Path) -> bool:
    """Whether ``root`` has its own held-out split (``val/`` or ``test/`` of class folders)."""
    return any((root / split).is_dir() and _class_folders(root / split) for split in ("val", "test"))


def _decode_file(path: Path, decode: Callable[..., _Decoded]) -> _Decoded:
    """``decode(bytes, name=...)`` on one file, its failures as DatasetErrors naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return decode(data, name=str(path))
    except ImageError as exc:
        raise DatasetError(str(exc)) from None


def read_image_file(
    path: Path, *, channels: int, reduce_to: tuple[int, int] | None = None
) -> Image.Image:
    """One image file decoded as 8-bit grayscale (``channels`` 1) or RGB (3), upright.

    ``reduce_to`` (width, height) lets a JPEG decode at 1/2, 1/4 or 1/8 scale in the DCT domain
    (Pillow's ``draft``), at the smallest scale still at least that size: a 12-megapixel photo
    decodes about 10× faster at 1/4. Training crops use it; evaluation never does, since the
    server decodes at full size.

    Raises:
        DatasetError: an unreadable file or image, naming the file.
    """
    return _decode_file(path, functools.partial(decode_image, channels=channels, reduce_to=reduce_to))


def prepare_image_file(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """One image file as the C×H×W float32 input ``preprocessing`` makes of it (the server's
    decoding, resize and crop), its failures as DatasetErrors naming the file."""
    return _decode_file(path, preprocessing.prepare_encoded)


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """The image files of an ImageFolder tree and their labels (the sorted class folders' indices).

    Images are decoded only when read; nothing is cached.
    """

    files: tuple[Path, ...]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageFolder:
        """The images at ``indices`` (a split, a sample) as a folder of their own, with every class name."""
        chosen = checked_indices(indices, len(self))
        return ImageFolder(
            files=tuple(self.files[i] for i in chosen), labels=self.labels[chosen], class_names=self.class_names
        )

    def read(self, indices: Sequence[int] | np.ndarray, *, preprocessing: Preprocessing) -> np.ndarray:
        """The images at ``indices``, decoded and prepared by ``preprocessing`` (any size is
        resized, and centre-cropped when it sets ``resize``), as float32 N×C×H×W."""
        chosen = checked_indices(indices, len(self))
        out = np.empty((len(chosen), *preprocessing.input_shape), np.float32)
        for row, index in enumerate(chosen):
            out[row] = prepare_image_file(self.files[index], preprocessing)
        return out

    def to_memory(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        resize: int | None = None,
        crop: int | tuple[int, int] | None = None,
    ) -> InMemoryDataset:
        """Decode the images at ``indices`` (all by default) into memory as N×H×W×3 uint8 RGB,
        for training, which draws random batches and measures statistics on one size.

        This holds every chosen image: a folder of ImageNet's size does not fit, so evaluation
        and verification use :meth:`read` instead.

        Args:
            indices: which images; None for all.
            resize: scale each image so its shorter side has this length, keeping aspect ratio.
            crop: then cut the centre height×width (an int for a square).
                Without resize and crop every image must already have the same size.
        """
        crop_size = (crop, crop) if isinstance(crop, int) else crop
        if (resize is not None and resize < 1) or (crop_size is not None and min(crop_size) < 1):
            raise DatasetError(f"resize and crop must be positive, got {resize} and {crop}")
        chosen = checked_indices(range(len(self)) if indices is None else indices, len(self))
        rgb = functools.partial(decode_image, channels=3)
        # Filled image by image, so memory holds the decoded images and one more, not every file.
        images = np.zeros((0, 0, 0, 3), np.uint8)
        for row, index in enumerate(chosen):
            path = self.files[index]
            pil = resize_and_crop(_decode_file(path, rgb), resize=resize, crop=crop_size, name=str(path))
            if row == 0:
                images = np.empty((len(chosen), pil.height, pil.width, 3), np.uint8)
            elif (pil.height, pil.width) != images.shape[1:3]:
                raise DatasetError(
                    f"{path}: {pil.width}×{pil.height} after resize/crop, but {self.files[chosen[0]].name} is "
                    f"{images.shape[2]}×{images.shape[1]}; images held in memory need one size, "
                    "which resize and crop give"
                )
            images[row] = np.asarray(pil)
        return InMemoryDataset(images=images, labels=self.labels[chosen], class_names=self.class_names)


def load_image_folder(root: Path | str, *, split: Literal["train", "val", "test"] | None = None) -> ImageFolder:
    """List an ImageFolder tree: one folder per class (names sorted → labels), images inside.

    Every file is checked to be an image by its extension here; its content when it is read.

    Args:
        root: holds the class folders, or ``train/`` and ``val/`` (``test/``) that do.
        split: which of ``root``'s split folders to read; None reads ``root`` itself. "test"
            falls back to ``val/``, since ImageNet's labelled evaluation set is its val split.
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

    classes = _class_folders(root)
    if not classes:
        raise DatasetError(f"{root}: no class folders; expected <class>/<image> files")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_folder in enumerate(classes):
        entries = visible_entries(class_folder)
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
    return ImageFolder(files=tuple(files), labels=np.asarray(labels, np.int64), class_names=[c.name for c in classes])
