"""IDX, CIFAR and ImageFolder reading, format detection and streaming batches, on files
written in the real formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from samples import write_idx

from resnet_serve.datasets import (
    FASHION_MNIST_CLASSES,
    ImageFolder,
    InMemoryDataset,
    batches,
    load_cifar_dataset,
    load_dataset,
    load_default_dataset,
    load_idx_dataset,
    load_image_folder,
    read_idx,
)
from resnet_serve.errors import DatasetError
from resnet_serve.preprocessing import Preprocessing


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
        InMemoryDataset(images=np.zeros((1, 2, 2), np.uint8), labels=np.zeros(1, np.int64), class_names=[])


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


# --- Reading by index and streaming batches ---

FASHION = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))


def test_batches_stream_the_chosen_images_in_order() -> None:
    test = load_default_dataset(split="test")
    chosen = [9, 3, 0, 5, 7]
    got = list(batches(test, preprocessing=FASHION, batch_size=2, indices=chosen))
    assert [len(labels) for _, labels in got] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([inputs for inputs, _ in got]), FASHION.normalize(test.images[chosen]))
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in got]), test.labels[chosen])
    assert sum(len(labels) for _, labels in batches(test, preprocessing=FASHION, batch_size=4096)) == 10_000
    np.testing.assert_array_equal(test.read(range(3), preprocessing=FASHION), FASHION.normalize(test.images[:3]))


def test_indices_outside_the_dataset_and_bad_batch_sizes_are_refused_at_once() -> None:
    dataset = InMemoryDataset(images=np.zeros((3, 2, 2), np.uint8), labels=np.array([0, 1, 0]), class_names=["a", "b"])
    gray = Preprocessing(channels=1, height=2, width=2, mean=(0.5,), std=(0.25,))
    for indices in ([0, 3], [-1], np.array([[0]]), np.array([0.5])):
        with pytest.raises(DatasetError, match="image indices"):
            dataset.read(indices, preprocessing=gray)
        with pytest.raises(DatasetError, match="image indices"):
            batches(dataset, preprocessing=gray, batch_size=2, indices=indices)  # before any batch is asked for
    with pytest.raises(DatasetError, match="batch size must be at least 1, got 0"):
        batches(dataset, preprocessing=gray, batch_size=0)
    assert dataset.read([], preprocessing=gray).shape == (0, 1, 2, 2)
    subset = dataset.to_memory([2, 1])
    assert subset.labels.tolist() == [0, 1] and subset.images.shape == (2, 2, 2) and dataset.to_memory() is dataset


# --- ImageFolder trees ---


def _save(path: Path, pixels: np.ndarray, **options: Any) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
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

    listed = load_image_folder(tmp_path, split="train")
    assert isinstance(listed, ImageFolder) and len(listed) == 3
    assert listed.class_names == ["n01440764", "n01443537"] and listed.labels.tolist() == [0, 0, 1]
    loaded = listed.to_memory()
    assert loaded.images.shape == (3, 6, 5, 3) and loaded.labels.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(loaded.images[0], train["n01440764/a.png"])
    np.testing.assert_array_equal(loaded.images[1], train["n01440764/b.PNG"])
    # Grayscale files become RGB with three equal channels.
    np.testing.assert_array_equal(loaded.images[2], np.repeat(train["n01443537/c.png"][..., None], 3, axis=2))
    # Read for a model, the same files give what normalizing those pixels gives.
    rgb = Preprocessing(channels=3, height=6, width=5, mean=(0.5,) * 3, std=(0.25,) * 3)
    np.testing.assert_array_equal(listed.read([2, 0], preprocessing=rgb), rgb.normalize(loaded.images[[2, 0]]))

    # "test" reads val/, ImageNet's labelled evaluation split; load_dataset does the same.
    with Image.open(tmp_path / "val/n01440764/ILSVRC2012_val_00000001.JPEG") as jpeg:
        decoded = np.asarray(jpeg)  # lossy: compare with the decoded file, not the saved pixels
    for val in (load_image_folder(tmp_path, split="test"), load_dataset(tmp_path, split="test")):
        in_memory = val.to_memory()
        assert in_memory.labels.tolist() == [0, 1] and in_memory.images.shape == (2, 6, 5, 3)
        np.testing.assert_array_equal(in_memory.images[0], decoded)
    assert load_dataset(tmp_path / "val", split="train").labels.tolist() == [0, 1]
    with pytest.raises(DatasetError, match=r"val: no train/ folder"):
        load_image_folder(tmp_path / "val", split="train")


def test_image_folder_to_memory_resizes_and_center_crops(tmp_path: Path, rng: np.random.Generator) -> None:
    wide = _save(tmp_path / "a/wide.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    _save(tmp_path / "b/tall.png", rng.integers(0, 256, (40, 16, 3), dtype=np.uint8))
    folder = load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"tall.png: 16×40 after resize/crop, but wide.png is 30×20; .*resize and crop"):
        folder.to_memory()

    loaded = folder.to_memory(resize=10, crop=(8, 6))
    assert loaded.images.shape == (2, 8, 6, 3)
    # Shorter side 20 → 10 keeps the aspect ratio (30 → 15), then the centre 8×6 is cut.
    resized = np.asarray(Image.fromarray(wide).resize((15, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(loaded.images[0], resized[1:9, 4:10])
    assert folder.to_memory([1], resize=10, crop=8).labels.tolist() == [1]
    with pytest.raises(DatasetError, match=r"wide.png: 15×10 is smaller than the 12×12 crop"):
        folder.to_memory(resize=10, crop=12)


def test_photos_of_any_size_are_read_with_the_models_resize_and_crop(tmp_path: Path) -> None:
    """Bug A: `export --data photos/` stopped at the second photo ("600×512 after resize/crop,
    but b.jpg is 512×600") instead of applying the checkpoint's resize 256 / centre crop 224."""
    sizes = {"a.jpg": (600, 512), "b.jpg": (512, 600), "c.jpg": (333, 500)}  # width × height
    for index, (name, (width, height)) in enumerate(sizes.items()):
        y, x = np.mgrid[0:height, 0:width]
        photo = np.stack([x * 255 // width, y * 255 // height, (x + y + 40 * index) % 256], axis=-1).astype(np.uint8)
        _save(tmp_path / "photos/val" / f"class{index % 2}" / name, photo, quality=92)
    imagenet = Preprocessing(channels=3, height=224, width=224, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225), resize=256)

    photos = load_dataset(tmp_path / "photos", split="test")
    inputs = photos.read(range(len(photos)), preprocessing=imagenet)
    assert inputs.shape == (3, 3, 224, 224) and photos.labels.tolist() == [0, 0, 1]  # a, c; b
    # By hand, torchvision's way: shorter side → 256 (the other side rounded down), centre 224 crop.
    resized = {"a.jpg": (300, 256), "b.jpg": (256, 300), "c.jpg": (256, 384)}
    for row, path in enumerate(photos.files):
        width, height = resized[path.name]
        left, top = round((width - 224) / 2), round((height - 224) / 2)
        with Image.open(path) as jpeg:
            pixels = np.asarray(
                jpeg.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
                .crop((left, top, left + 224, top + 224))
            )
        expected = (pixels / 255 - np.array(imagenet.mean)) / np.array(imagenet.std)
        np.testing.assert_allclose(inputs[row], expected.transpose(2, 0, 1), atol=1e-5)
    streamed = [labels.tolist() for _, labels in batches(photos, preprocessing=imagenet, batch_size=2)]
    assert streamed == [[0, 0], [1]]


def test_image_folder_decodes_only_what_is_read(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _save(tmp_path / "cat" / name, np.full((4, 4, 3), 200, np.uint8))
    (tmp_path / "cat/d.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    folder = load_dataset(tmp_path, split="test")
    stream = batches(folder, preprocessing=Preprocessing(channels=3, height=2, width=2, mean=(0,) * 3, std=(1,) * 3),
                     batch_size=2)
    first, _ = next(stream)  # read, although a later file is broken
    np.testing.assert_allclose(first, 200 / 255, atol=1e-6)
    with pytest.raises(DatasetError, match=r"cat/d.png: not a readable image \("):
        next(stream)
    (tmp_path / "cat/a.png").unlink()
    with pytest.raises(DatasetError, match=r"cat/a.png: cannot read it \(No such file"):
        folder.to_memory()


def test_image_folder_names_the_bad_file(tmp_path: Path) -> None:
    _save(tmp_path / "cat/ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"dog: empty class folder"):
        load_image_folder(tmp_path)
    (tmp_path / "dog/broken.JPEG").write_bytes(b"\xff\xd8\xff not really a JPEG")
    with pytest.raises(DatasetError, match=r"dog/broken.JPEG: not a readable image \("):
        load_dataset(tmp_path, split="train").to_memory()
    (tmp_path / "dog/broken.JPEG").unlink()
    (tmp_path / "dog/labels.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"dog/labels.csv: not an image file; expected only .*\.jpeg"):
        load_image_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"cat: no class folders; expected <class>/<image>"):
        load_image_folder(tmp_path / "cat")
