"""CIFAR-10 and CIFAR-100 as the "python version" archives from cs.toronto.edu ship them:
Python 2 pickles, read with an unpickler that rebuilds numpy arrays and nothing else."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from resnet_serve.datasets.in_memory import InMemoryDataset
from resnet_serve.errors import DatasetError

__all__ = ["is_cifar_folder", "load_cifar_dataset"]

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
    # Each row is the red plane, then green, then blue (C×H×W); InMemoryDataset is H×W×C.
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
                # Links are skipped: a stream cannot seek back to their targets.
                extracted = tar.extractfile(member) if member.isfile() and member.name in wanted else None
                if extracted is not None:
                    layout, name = wanted[member.name]
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


def load_cifar_dataset(path: Path | str, *, split: Literal["train", "test"]) -> InMemoryDataset:
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
    return InMemoryDataset(images=np.concatenate(images), labels=np.concatenate(labels), class_names=class_names)


def is_cifar_folder(folder: Path) -> bool:
    """Whether ``folder`` is, or directly holds, an extracted CIFAR folder."""
    return _cifar_folder_layout(folder) is not None
