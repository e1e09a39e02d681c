"""The training input pipeline on real JPEG photos of mixed sizes: splits and samples chosen
from the file list, the DataLoader's augmented batches (the same whatever the workers or
processes), validation prepared exactly as the server prepares images, and what the
checkpoint's preprocessing becomes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from samples import PHOTO_FOLDER_CLASSES, fashion_test_set, write_photo_folder

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING, CheckpointMeta
from resnet_serve.datasets import ImageFolder, InMemoryDataset
from resnet_serve.datasets.image_folder import read_image_file
from resnet_serve.errors import DatasetError, TrainingError
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.training import TrainConfig
from resnet_serve.training.distributed import World
from resnet_serve.training.loaders import train_batches, val_batches
from resnet_serve.training.preprocessing import run_preprocessing
from resnet_serve.training.splits import limited, load_splits, stratified_sample, stratified_split

CPU = torch.device("cpu")
SMALL = TrainConfig(architecture="resnet20", image_size=16, batch_size=8, workers=0, seed=5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos") / "folder", per_class=10, sides=(20, 90))


def test_stratified_samples_keep_each_class_share_and_follow_the_seed() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    sample = stratified_sample(labels, 10, seed=1)
    assert len(sample) == 10 and np.bincount(labels[sample]).tolist() == [5, 3, 2]
    assert np.array_equal(sample, stratified_sample(labels, 10, seed=1))
    assert not np.array_equal(sample, stratified_sample(labels, 10, seed=2))
    # Shares that do not divide evenly go by largest remainder: 7 × (0.5, 0.3, 0.2) = 3.5, 2.1, 1.4.
    assert np.bincount(labels[stratified_sample(labels, 7, seed=0)]).tolist() == [4, 2, 1]
    assert np.array_equal(stratified_sample(labels, 500, seed=0), np.arange(100))

    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted([*train, *val]) == list(range(100))


def test_a_folder_without_val_holds_out_a_stratified_split_that_never_trains(photos: Path) -> None:
    splits = load_splits(photos, config=TrainConfig(val_split=0.2, seed=5))
    assert isinstance(splits.train, ImageFolder) and isinstance(splits.val, ImageFolder)
    assert len(splits.train) == 32 and len(splits.val) == 8
    assert not set(splits.train.files) & set(splits.val.files)
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2, 2]
    assert splits.train.class_names == list(PHOTO_FOLDER_CLASSES) and "stratified 20%" in splits.held_out
    again = load_splits(photos, config=TrainConfig(val_split=0.2, seed=5, limit=8))
    # The limit is the run's, applied later: it never changes which images validate.
    assert again.val.files == splits.val.files
    assert load_splits(photos, config=TrainConfig(val_split=0.2, seed=6)).val.files != splits.val.files


def test_a_folder_with_val_validates_on_it(tmp_path: Path) -> None:
    write_photo_folder(tmp_path / "train", per_class=3, sides=(20, 30))
    write_photo_folder(tmp_path / "val", per_class=2, sides=(20, 30), seed=1)
    splits = load_splits(tmp_path, config=TrainConfig())
    assert (len(splits.train), len(splits.val), splits.held_out) == (12, 8, "the val/ folder")
    assert all(path.parent.parent.name == "val" for path in splits.val.files)


def test_limit_is_a_stratified_sample_chosen_from_the_file_list_before_decoding(tmp_path: Path) -> None:
    # Files that do not exist: choosing the sample must not open one.
    files = tuple(tmp_path / f"class{i % 4}" / f"{i}.jpg" for i in range(400))
    folder = ImageFolder(files=files, labels=np.arange(400) % 4, class_names=[f"class{i}" for i in range(4)])
    sample = limited(folder, TrainConfig(limit=40, seed=2))
    assert isinstance(sample, ImageFolder) and len(sample) == 40
    assert np.bincount(sample.labels).tolist() == [10, 10, 10, 10]
    assert set(sample.files) < set(files) and sample.files != files[:40]


def test_training_batches_are_augmented_photos_the_same_whatever_reads_them(photos: Path) -> None:
    splits = load_splits(photos, config=SMALL)
    preprocessing = run_preprocessing(SMALL, splits.train, init=None)
    assert (preprocessing.height, preprocessing.resize) == (16, 18)

    def epoch(config: TrainConfig, world: World, number: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = train_batches(splits.train, config=config, preprocessing=preprocessing, world=world, device=CPU)
        batches.set_epoch(number)
        return list(batches)

    one = epoch(SMALL, World(), 1)
    assert len(one) == 4  # 36 training photos, batch 8, the last 4 dropped
    inputs, labels = one[0]
    assert inputs.shape == (8, 3, 16, 16) and inputs.dtype == torch.float32 and labels.dtype == torch.int64
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    # Normalised with ImageNet's statistics: values of photos spread around 0.
    assert -2.2 < float(inputs.min()) < 0 < float(inputs.max()) < 2.7
    # Two worker processes give the very same batches; another epoch, other crops.
    workers = epoch(TrainConfig(**{**SMALL.to_dict(), "workers": 2}), World(), 1)
    assert all(torch.equal(a, b) and torch.equal(x, y) for (a, x), (b, y) in zip(one, workers, strict=True))
    assert not torch.equal(epoch(SMALL, World(), 2)[0][0], inputs)
    # Two processes with half the batch each: together the one-process batches, image by image.
    halves = [epoch(SMALL, World(rank=rank, world_size=2), 1) for rank in (0, 1)]
    for step, (inputs, _) in enumerate(one):
        shared = torch.cat([halves[0][step][0], halves[1][step][0]])
        assert sorted(image.numpy().tobytes() for image in shared) == sorted(image.numpy().tobytes() for image in inputs)


def test_validation_prepares_photos_exactly_as_the_server_does(photos: Path) -> None:
    splits = load_splits(photos, config=SMALL)
    preprocessing = Preprocessing(channels=3, height=16, width=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize=20)
    shares = [list(val_batches(splits.val, preprocessing=preprocessing, world=World(rank=r, world_size=2),
                               batch_size=3, workers=1)) for r in (0, 1)]
    inputs = torch.cat([inputs for share in shares for inputs, _ in share])
    order = [*range(0, len(splits.val), 2), *range(1, len(splits.val), 2)]
    expected = np.stack([preprocessing.load_image(splits.val.files[i]) for i in order])
    assert np.array_equal(inputs.numpy(), expected)


def test_a_corrupt_photo_is_one_line_naming_it(photos: Path, tmp_path: Path) -> None:
    folder = load_splits(photos, config=SMALL).train
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(folder.files[0].read_bytes()[:200])
    damaged = ImageFolder(files=(broken, *folder.files[1:]), labels=folder.labels, class_names=folder.class_names)
    config = TrainConfig(**{**SMALL.to_dict(), "workers": 1})
    batches = train_batches(damaged, config=config, preprocessing=run_preprocessing(config, damaged, init=None),
                            world=World(), device=CPU)
    batches.set_epoch(1)
    with pytest.raises(DatasetError) as raised:
        list(batches)
    assert str(raised.value).startswith(f"{broken}: not a readable image") and "\n" not in str(raised.value)


def test_large_jpegs_decode_reduced_for_training(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 1200, 3), np.uint8)).save(buffer, "JPEG")
    (tmp_path / "big.jpg").write_bytes(buffer.getvalue())
    full = read_image_file(tmp_path / "big.jpg", channels=3)
    reduced = read_image_file(tmp_path / "big.jpg", channels=3, reduce_to=(200, 200))
    assert full.size == (1200, 900) and reduced.size == (300, 225)  # 1/4: the smallest scale ≥ 200


def test_what_the_checkpoint_records_as_preprocessing(photos: Path) -> None:
    folder = load_splits(photos, config=SMALL).train
    fresh = run_preprocessing(TrainConfig(architecture="resnet50"), folder, init=None)
    assert fresh == IMAGENET_PREPROCESSING  # 224, resize 256, ImageNet's statistics
    assert run_preprocessing(TrainConfig(architecture="resnet20"), folder, init=None).resize == 37  # 32 / 0.875

    source = Preprocessing(channels=3, height=64, width=64, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2),
                           interpolation="bicubic", resize=80)
    init = CheckpointMeta(architecture="resnet18", num_classes=2, in_channels=3, class_names=["a", "b"],
                          preprocessing=source)
    assert run_preprocessing(TrainConfig(architecture="resnet18"), folder, init=init) == source
    changed = run_preprocessing(TrainConfig(architecture="resnet18", image_size=96, std=(0.3, 0.3, 0.3)), folder,
                                init=init)
    assert (changed.height, changed.resize, changed.mean, changed.std, changed.interpolation) == (
        96, 110, source.mean, (0.3, 0.3, 0.3), "bicubic")

    fashion = fashion_test_set()
    small = InMemoryDataset(images=fashion.images[:64], labels=fashion.labels[:64], class_names=fashion.class_names)
    with pytest.raises(TrainingError, match="image_size and resize apply to folders of photos"):
        run_preprocessing(TrainConfig(image_size=32), small, init=None)
    with pytest.raises(TrainingError, match="1 channel"):
        run_preprocessing(TrainConfig(), small, init=init)
