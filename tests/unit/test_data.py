"""IDX, CIFAR and ImageFolder reading, format detection and the shared preprocessing,
on files written in the real formats."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from resnet_serve.data import (
    FASHION_MNIST_CLASSES,
    ImageDataset,
    Preprocessing,
    load_cifar_dataset,
    load_dataset,
    load_default_dataset,
    load_idx_dataset,
    load_image_folder,
    read_idx,
)
from resnet_serve.errors import DatasetError, ImageError

_DTYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, extra: bytes = b"") -> Path:
    """An IDX file exactly as the MNIST distribution lays it out: magic, big-endian dims, data."""
    header = magic or bytes([0, 0, _DTYPE_CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes() + extra
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_images_plain_and_gz(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / name, images)
    header = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert header[:8] == b"\x00\x00\x08\x03\x00\x00\x00\x05"
    np.testing.assert_array_equal(read_idx(path, ndim=3), images)


def test_read_idx_labels_and_other_dtypes(tmp_path: Path, rng: np.random.Generator) -> None:
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels), ndim=1), labels)
    ints = rng.integers(-1000, 1000, (2, 3), dtype=np.int32)
    got = read_idx(write_idx(tmp_path / "i", ints))
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, ints)
    floats = rng.standard_normal((4,)).astype(np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.gz", floats)), floats)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((2, 2, 2), np.uint8), magic=b"\x00\x00\x12\x34")
    with pytest.raises(DatasetError, match=r"x: not an IDX file \(magic 0x00001234, expected 0x00000803\)"):
        read_idx(path, ndim=3)


def test_read_idx_rejects_wrong_ndim(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.zeros(3, np.uint8))
    with pytest.raises(DatasetError, match="1 dimensions.*expected 0x00000803"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("name", ["images", "images.gz"])
def test_read_idx_rejects_truncated_data(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    payload = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (3, 4, 4)) + bytes(40)
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    with pytest.raises(DatasetError, match=r"declares 3×4×4 uint8 \(48 bytes of data\), the file holds 40"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes_short_header_and_broken_gzip(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="the file holds 5"):
        read_idx(write_idx(tmp_path / "a", np.zeros(4, np.uint8), extra=b"!"))
    (tmp_path / "b").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(tmp_path / "b")
    (tmp_path / "c.gz").write_bytes(gzip.compress(bytes(100))[:20])
    with pytest.raises(DatasetError, match="c.gz: not a readable gzip file"):
        read_idx(tmp_path / "c.gz")
    with pytest.raises(DatasetError, match="no such file"):
        read_idx(tmp_path / "missing")


def _write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def test_load_idx_dataset_finds_both_splits(tmp_path: Path, rng: np.random.Generator) -> None:
    train_images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    train_labels = np.array([0, 1, 2, 0, 1, 2], np.uint8)
    _write_split(tmp_path, "train", train_images, train_labels, gz=True)
    _write_split(tmp_path, "t10k", train_images[:2], train_labels[:2], gz=False)

    train = load_idx_dataset(tmp_path, split="train", class_names=["a", "b", "c"])
    np.testing.assert_array_equal(train.images, train_images)
    assert train.labels.dtype == np.int64 and train.labels.tolist() == train_labels.tolist()
    assert train.class_names == ["a", "b", "c"] and train.channels == 1 and len(train) == 6

    test = load_idx_dataset(tmp_path, split="test")
    assert len(test) == 2 and test.class_names == ["0", "1"]


def test_load_idx_dataset_rejects_mismatched_counts_and_missing_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="no train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz"):
        load_idx_dataset(tmp_path, split="train")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match="has 3 images but train-labels-idx1-ubyte has 2 labels"):
        load_idx_dataset(tmp_path, split="train")
    with pytest.raises(DatasetError, match="labels span 0..0 but there are 0 class names"):
        ImageDataset(images=np.zeros((1, 2, 2), np.uint8), labels=np.zeros(1, np.int64), class_names=[])


def test_missing_default_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_default_dataset(split="test", folder=tmp_path / "nowhere")


def test_real_fashion_mnist_test_split() -> None:
    test = load_default_dataset(split="test")
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == np.uint8
    assert sorted(set(test.labels.tolist())) == list(range(10))
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names == list(FASHION_MNIST_CLASSES)
    preprocessing = Preprocessing.for_dataset(test)
    # Fashion-MNIST's well-known statistics: mean ≈ 0.286, std ≈ 0.353.
    assert preprocessing.mean[0] == pytest.approx(0.286, abs=0.002)
    assert preprocessing.std[0] == pytest.approx(0.353, abs=0.002)
    assert preprocessing.input_shape == (1, 28, 28)


GRAY = Preprocessing(channels=1, height=2, width=2, mean=(0.5,), std=(0.25,))


def test_preprocessing_round_trips_through_json() -> None:
    rgb = Preprocessing(channels=3, height=224, width=200, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), interpolation="bicubic")
    for original in (GRAY, rgb):
        again = Preprocessing.from_dict(json.loads(json.dumps(original.to_dict())))
        assert again == original
    assert rgb.input_shape == (3, 224, 200)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": [0.1, 0.2]}, "needs 1 mean and std values, got 2 and 1"),
        ({"std": [0.0]}, "std positive"),
        ({"channels": 2, "mean": [0, 0], "std": [1, 1]}, "channels must be 1 or 3"),
        ({"height": "28"}, "height must be an integer"),
        ({"mean": "0.5"}, "mean must be a list of numbers"),
        ({"interpolation": "fancy"}, "unknown interpolation 'fancy'"),
        ({"crop": 0.9}, "unknown crop"),
    ],
)
def test_preprocessing_from_dict_rejects_bad_dicts(change: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        Preprocessing.from_dict({**GRAY.to_dict(), **change})
    with pytest.raises(DatasetError, match="missing height"):
        Preprocessing.from_dict({k: v for k, v in GRAY.to_dict().items() if k != "height"})
    with pytest.raises(DatasetError, match="must be a mapping"):
        Preprocessing.from_dict([1, 2])


def test_normalize_by_hand() -> None:
    images = np.array([[[0, 255], [51, 102]]], np.uint8)
    out = GRAY.normalize(images)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2) and out.flags.c_contiguous
    expected = (np.array([[0, 255], [51, 102]]) / 255 - 0.5) / 0.25  # [[-2, 2], [-1.2, -0.4]]
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)
    # N×H×W×1 is the same grayscale.
    np.testing.assert_array_equal(GRAY.normalize(images[..., None]), out)

    rgb = Preprocessing(channels=3, height=1, width=2, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    pixels = np.array([[[[255, 0, 51], [0, 255, 255]]]], np.uint8)  # 1×1×2×3
    got = rgb.normalize(pixels)
    assert got.shape == (1, 3, 1, 2)
    np.testing.assert_allclose(got[0, :, 0, 0], [1.0, -1.0, (0.2 - 1.0) / 0.25], atol=1e-6)
    np.testing.assert_allclose(got[0, :, 0, 1], [0.0, 1.0, 0.0], atol=1e-6)


def test_normalize_converts_channels_and_resizes_like_pil(rng: np.random.Generator) -> None:
    gray_to_rgb = Preprocessing(channels=3, height=2, width=2, mean=(0, 0, 0), std=(1, 1, 1))
    gray = np.array([[[0, 255], [51, 102]]], np.uint8)
    out = gray_to_rgb.normalize(gray)
    assert out.shape == (1, 3, 2, 2)
    for c in range(3):
        np.testing.assert_allclose(out[0, c], gray[0] / 255, atol=1e-6)

    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    # ITU-R 601-2 luma, as PIL's "L" conversion computes it: 255 · 0.299 → 76.
    np.testing.assert_allclose(GRAY.normalize(red)[0, 0], (76 / 255 - 0.5) / 0.25, atol=1e-6)

    big = rng.integers(0, 256, (3, 9, 7), dtype=np.uint8)
    resized = GRAY.normalize(big)
    assert resized.shape == (3, 1, 2, 2)
    pil = np.asarray(Image.fromarray(big[1]).resize((2, 2), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(resized[1, 0], (pil / 255 - 0.5) / 0.25, atol=1e-6)

    with pytest.raises(ImageError, match="expected uint8 images"):
        GRAY.normalize(np.zeros((1, 2, 2), np.float32))


def test_for_dataset_measures_mean_and_std() -> None:
    images = np.array([[[0, 255]], [[255, 0]]], np.uint8)  # half black, half white
    dataset = ImageDataset(images=images, labels=np.array([0, 1]), class_names=["a", "b"])
    preprocessing = Preprocessing.for_dataset(dataset)
    assert (preprocessing.channels, preprocessing.height, preprocessing.width) == (1, 1, 2)
    assert preprocessing.mean == (0.5,) and preprocessing.std == (0.5,)


def test_load_image_png_and_jpeg(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    fashion = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))
    np.testing.assert_array_equal(fashion.load_image(tmp_path / "gray.png"), fashion.normalize(gray[None])[0])

    # A smooth RGB photo-like gradient, saved lossy and read back at another size and mode.
    y, x = np.mgrid[0:60, 0:80]
    photo = np.stack([x * 3, y * 4, (x + y) * 3 // 2], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    rgb = Preprocessing(channels=3, height=30, width=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loaded = rgb.load_image(tmp_path / "photo.jpg")
    assert loaded.shape == (3, 30, 40) and loaded.dtype == np.float32
    reference = np.asarray(Image.fromarray(photo).resize((40, 30), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(loaded, (reference.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=0.06)
    assert fashion.load_image(tmp_path / "photo.jpg").shape == (1, 28, 28)


def test_load_image_rejects_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"this is not a JPEG at all")
    with pytest.raises(ImageError, match=r"^photo.jpg: not a readable image \("):
        GRAY.load_image(tmp_path / "photo.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(ImageError, match="cut.png: not a readable image"):
        GRAY.load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="no such file"):
        GRAY.load_image(tmp_path / "absent.png")


# --- CIFAR: batches written exactly as the official Python 2 cPickle files are ---


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: every string is a byte string (SHORT_BINSTRING /
    BINSTRING opcodes). Python 3's own protocol 2 would wrap bytes in `_codecs.encode` calls,
    which the real CIFAR files never contain."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_python2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str
    dispatch[str] = _save_python2_str


def python2_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(images: np.ndarray, labels: list[int], *, labels_key: bytes = b"labels") -> bytes:
    """N×3×32×32 uint8 (C×H×W, as CIFAR stores rows) → a batch file's bytes, with its real keys."""
    return python2_pickle({
        b"batch_label": b"testing batch 1 of 1",
        labels_key: labels,
        b"data": images.reshape(len(images), 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    })


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10_archive(path: Path, rng: np.random.Generator, *, skip: str = "") -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz laid out like the real one; returns the C×H×W images per batch."""
    chw = {name: rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
           for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    members = {name: cifar_batch(images, [i % 10, (i + 3) % 10]) for i, (name, images) in enumerate(chw.items())}
    members["batches.meta"] = python2_pickle(
        {b"num_cases_per_batch": 2, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    )
    members["readme.html"] = b"<html></html>"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            if name != skip:
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return chw


def test_cifar10_archive_both_splits_read_in_memory(tmp_path: Path, rng: np.random.Generator) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    chw = write_cifar10_archive(archive, rng)
    with gzip.open(archive) as raw:  # the real layout: batches are Python 2 pickles inside the tar
        assert raw.read(1024)[512:516] == b"\x80\x02}q"

    train = load_cifar_dataset(archive, split="train")
    assert train.images.shape == (10, 32, 32, 3) and train.images.flags.c_contiguous
    assert train.labels.tolist() == [0, 3, 1, 4, 2, 5, 3, 6, 4, 7]
    assert train.class_names == CIFAR10_NAMES and train.channels == 3
    # Channel c, row y, column x of CIFAR's C×H×W row lands at [y, x, c].
    expected = np.concatenate([chw[f"data_batch_{i}"] for i in range(1, 6)]).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(train.images, expected)
    assert train.images[3, 5, 7, 2] == chw["data_batch_2"][1, 2, 5, 7]

    test = load_dataset(archive, split="test")
    np.testing.assert_array_equal(test.images, chw["test_batch"].transpose(0, 2, 3, 1))
    assert test.labels.tolist() == [5, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # nothing extracted


def test_cifar100_extracted_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"class_{i}" for i in range(100)]
    meta = {b"fine_label_names": [n.encode() for n in fine_names], b"coarse_label_names": [b"c0", b"c1"]}
    (folder / "meta").write_bytes(python2_pickle(meta))
    splits = {"train": rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8),
              "test": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)}
    for name, images in splits.items():
        fine = [99, 0, 42][: len(images)]
        batch = python2_pickle({b"filenames": [b"x.png"] * len(images), b"batch_label": b"training batch 1 of 1",
                                b"fine_labels": fine, b"coarse_labels": [1] * len(images),
                                b"data": images.reshape(len(images), 3072)})
        (folder / name).write_bytes(batch)
    (folder / "file.txt~").write_text("left over by the real archive\n")

    train = load_cifar_dataset(folder, split="train")
    assert train.labels.tolist() == [99, 0, 42] and train.class_names == fine_names
    np.testing.assert_array_equal(train.images, splits["train"].transpose(0, 2, 3, 1))
    # The folder the archive was extracted into works too, and load_dataset recognizes both.
    for path in (tmp_path, folder):
        test = load_dataset(path, split="test")
        np.testing.assert_array_equal(test.images, splits["test"].transpose(0, 2, 3, 1))
        assert test.labels.tolist() == [99, 0]


def test_cifar_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class RunsShell:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(python2_pickle({b"label_names": [b"a", b"b"]}))
    (folder / "test_batch").write_bytes(python2_pickle({b"data": RunsShell(), b"labels": [0]}))
    with pytest.raises(DatasetError, match=r"test_batch: refusing to unpickle (os|posix)\.system"):
        load_cifar_dataset(folder, split="test")
    assert not marker.exists()


def test_cifar_wrong_files_are_named(tmp_path: Path, rng: np.random.Generator) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar10_archive(archive, rng, skip="test_batch")
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz: no cifar-10-batches-py/test_batch in the archive"):
        load_cifar_dataset(archive, split="test")

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(python2_pickle({b"label_names": [b"a", b"b"]}))
    images = np.zeros((2, 3, 32, 32), np.uint8)
    # A CIFAR-100 batch (fine_labels) where CIFAR-10 expects labels.
    (folder / "test_batch").write_bytes(cifar_batch(images, [0, 1], labels_key=b"fine_labels"))
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py/test_batch: expected 'labels' as a list of 2 integers"):
        load_cifar_dataset(folder, split="test")
    (folder / "test_batch").write_bytes(cifar_batch(images, [0, 2]))
    with pytest.raises(DatasetError, match=r"test_batch: labels span 0..2 but batches.meta names 2 classes"):
        load_cifar_dataset(folder, split="test")
    (folder / "test_batch").write_bytes(python2_pickle({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"test_batch: expected 'data' as a uint8 N×3072 array .* data uint8 \(2, 1024\)"):
        load_cifar_dataset(folder, split="test")
    (folder / "test_batch").write_bytes(cifar_batch(images, [0, 1])[:100])
    with pytest.raises(DatasetError, match=r"test_batch: not a CIFAR pickle \("):
        load_cifar_dataset(folder, split="test")
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py: no data_batch_1; expected cifar-10-batches-py/"):
        load_cifar_dataset(folder, split="train")

    other = tmp_path / "photos.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.add(folder / "batches.meta", arcname="photos/batches.meta")
    with pytest.raises(DatasetError, match="photos.tar.gz: not a CIFAR archive; expected members under"):
        load_dataset(other, split="test")
    (tmp_path / "broken.tar.gz").write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="broken.tar.gz: not a readable tar archive"):
        load_cifar_dataset(tmp_path / "broken.tar.gz", split="train")


def test_load_dataset_names_what_it_found_and_the_formats_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes.txt: a file that is not a tar archive; expected an IDX folder"):
        load_dataset(tmp_path / "notes.txt", split="train")
    with pytest.raises(DatasetError, match=r": a folder with notes.txt; expected .*cifar-10-python.tar.gz.*ImageFolder"):
        load_dataset(tmp_path, split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: an empty folder; expected"):
        load_dataset(tmp_path / "empty", split="train")
    with pytest.raises(DatasetError, match="missing: no such file or folder"):
        load_dataset(tmp_path / "missing", split="train")


def test_load_dataset_still_reads_idx_folders(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, (2, 4, 4), dtype=np.uint8)
    _write_split(tmp_path, "t10k", images, np.array([1, 0], np.uint8), gz=True)
    test = load_dataset(tmp_path, split="test")
    np.testing.assert_array_equal(test.images, images)
    assert test.class_names == ["0", "1"]


# --- ImageFolder trees ---


def _save(path: Path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_image_folder_splits_classes_and_pixels(tmp_path: Path, rng: np.random.Generator) -> None:
    train = {
        "n01440764/a.png": _save(tmp_path / "train/n01440764/a.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)),
        "n01440764/b.PNG": _save(tmp_path / "train/n01440764/b.PNG", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)),
        "n01443537/c.png": _save(tmp_path / "train/n01443537/c.png", rng.integers(0, 256, (6, 5), dtype=np.uint8)),
    }
    y, x = np.mgrid[0:6, 0:5]
    smooth = np.stack([x * 40, y * 30, x * 20 + y * 10], axis=-1).astype(np.uint8)
    _save(tmp_path / "val/n01440764/ILSVRC2012_val_00000001.JPEG", smooth)
    _save(tmp_path / "val/n01443537/ILSVRC2012_val_00000002.JPEG", smooth)
    (tmp_path / "train/n01440764/.DS_Store").write_bytes(b"\x00")
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench\n")

    loaded = load_image_folder(tmp_path, split="train")
    assert loaded.class_names == ["n01440764", "n01443537"] and loaded.labels.tolist() == [0, 0, 1]
    assert loaded.images.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(loaded.images[0], train["n01440764/a.png"])
    np.testing.assert_array_equal(loaded.images[1], train["n01440764/b.PNG"])
    # Grayscale files become RGB with three equal channels.
    np.testing.assert_array_equal(loaded.images[2], np.repeat(train["n01443537/c.png"][..., None], 3, axis=2))

    # "test" reads val/, ImageNet's labelled evaluation split; load_dataset does the same.
    with Image.open(tmp_path / "val/n01440764/ILSVRC2012_val_00000001.JPEG") as jpeg:
        decoded = np.asarray(jpeg)  # lossy: compare with the decoded file, not the saved pixels
    for val in (load_image_folder(tmp_path, split="test"), load_dataset(tmp_path, split="test")):
        assert val.labels.tolist() == [0, 1] and val.images.shape == (2, 6, 5, 3)
        np.testing.assert_array_equal(val.images[0], decoded)
    assert load_dataset(tmp_path / "val", split="train").labels.tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"val: no train/ folder"):
        load_image_folder(tmp_path / "val", split="train")


def test_image_folder_resize_and_center_crop(tmp_path: Path, rng: np.random.Generator) -> None:
    wide = _save(tmp_path / "a/wide.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    _save(tmp_path / "b/tall.png", rng.integers(0, 256, (40, 16, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"tall.png: 16×40 after resize/crop, but wide.png is 30×20; give resize"):
        load_image_folder(tmp_path)

    loaded = load_image_folder(tmp_path, resize=10, crop=(8, 6))
    assert loaded.images.shape == (2, 8, 6, 3)
    # Shorter side 20 → 10 keeps the aspect ratio (30 → 15), then the centre 8×6 is cut.
    resized = np.asarray(Image.fromarray(wide).resize((15, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(loaded.images[0], resized[1:9, 4:10])
    with pytest.raises(DatasetError, match=r"wide.png: 15×10 is smaller than the 12×12 crop"):
        load_image_folder(tmp_path, resize=10, crop=12)


def test_image_folder_names_the_bad_file(tmp_path: Path) -> None:
    _save(tmp_path / "cat/ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"dog: empty class folder"):
        load_image_folder(tmp_path)
    (tmp_path / "dog/broken.JPEG").write_bytes(b"\xff\xd8\xff not really a JPEG")
    with pytest.raises(DatasetError, match=r"dog/broken.JPEG: not a readable image \("):
        load_dataset(tmp_path, split="train")
    (tmp_path / "dog/broken.JPEG").unlink()
    (tmp_path / "dog/labels.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"dog/labels.csv: not an image file; expected only .*\.jpeg"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"cat: no class folders; expected <class>/<image>"):
        load_image_folder(tmp_path / "cat")


def test_preprocessing_resize_then_center_crop(rng: np.random.Generator) -> None:
    imagenet = Preprocessing(channels=3, height=4, width=4, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225), resize=6)
    data = imagenet.to_dict()
    assert data["resize"] == 6 and Preprocessing.from_dict(json.loads(json.dumps(data))) == imagenet
    # Dicts written before resize existed still load, and unset resize is not written out.
    assert "resize" not in GRAY.to_dict() and Preprocessing.from_dict(GRAY.to_dict()).resize is None
    with pytest.raises(DatasetError, match="resize must be an integer"):
        Preprocessing.from_dict({**data, "resize": 6.5})
    with pytest.raises(DatasetError, match="resize must be at least the 4×4 crop, got 3"):
        Preprocessing.from_dict({**data, "resize": 3})

    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    plain = Preprocessing(**{**data, "resize": None})
    expected = np.asarray(Image.fromarray(image).resize((9, 6), Image.Resampling.BILINEAR))[1:5, 2:6]
    np.testing.assert_array_equal(imagenet.normalize(image[None]), plain.normalize(expected[None]))
