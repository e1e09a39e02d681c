"""IDX reading, dataset loading and the shared preprocessing, on files written in the real formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_serve.data import (
    FASHION_MNIST_CLASSES,
    ImageDataset,
    Preprocessing,
    load_default_dataset,
    load_idx_dataset,
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
