"""The ``torch.utils.data.DataLoader`` s that bring a run's batches to the model.

Two kinds of data, one interface:

- **Photos** (an ImageFolder tree): only the file list is held. Worker processes decode each
  image and augment it (``transforms.PhotoAugmentation``); validation decodes through the
  checkpoint's ``Preprocessing``, exactly as the server will. Memory holds the file list and a
  few batches whatever the size of the folder.
- **In-memory sets** (IDX, CIFAR): small enough to hold as uint8; a batch is gathered by index
  and augmented where it is, on the training device (``transforms.BatchAugmentation``).

One sampler orders both: ``EpochSampler`` is a seeded ``DistributedSampler`` (each process of a
run takes every N-th image of one shuffle, so the N shares of step k together are the global
batch k of a one-process run) that pairs each index with the seed its augmentation draws from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from resnet_serve.datasets import Dataset, ImageFolder, InMemoryDataset
from resnet_serve.datasets.image_folder import prepare_image_file, read_image_file
from resnet_serve.errors import ResnetServeError, TrainingError, first_line
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.training.distributed import World, cores_per_process
from resnet_serve.training.recipes import TrainConfig
from resnet_serve.training.transforms import BatchAugmentation, PhotoAugmentation, seeded

__all__ = ["EpochSampler", "TrainBatches", "train_batches", "val_batches"]



def _sample_seed(seed: int, epoch: int, index: int) -> int:
    # Odd multipliers spread (seed, epoch, index) over 63 bits; torch.manual_seed scrambles nearby seeds.
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + index) % 2**63


class EpochSampler(Sampler[tuple[int, int]]):
    """This process's share of a seeded shuffle of ``size`` images for the epoch given to
    ``set_epoch``, each index paired with the seed its augmentation draws from.

    The order is ``DistributedSampler``'s (shuffled with seed + epoch, the last images that do
    not fill every process dropped), so it does not depend on how many workers read it, and a
    resumed run sees the order the interrupted one would have.
    """

    def __init__(self, size: int, *, world: World, seed: int) -> None:
        self._order = DistributedSampler(
            range(size), num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed, drop_last=True
        )
        self._seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order:
            yield index, _sample_seed(self._seed, self._epoch, index)


class _PhotoTrainSet(torch.utils.data.Dataset):
    """Decodes and augments one photo per (index, seed), in a DataLoader worker."""

    def __init__(self, folder: ImageFolder, *, channels: int, augmentation: PhotoAugmentation, min_side: int) -> None:
        # Paths as one bytes array rather than Python objects: each worker touches all of them,
        # and touching an object (its reference count) copies its page into that worker.
        self._files = np.array([os.fsencode(path) for path in folder.files])
        self._labels = folder.labels
        self._channels = channels
        self._augmentation = augmentation
        self._min_side = min_side

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path = Path(os.fsdecode(self._files[index]))
        pil = read_image_file(path, channels=self._channels, reduce_to=(self._min_side, self._min_side))
        with seeded(seed):
            return self._augmentation(np.asarray(pil)), int(self._labels[index])


class _InMemoryTrainSet(torch.utils.data.Dataset):
    """Gathers a whole batch of uint8 images at once (``__getitems__``), for augmentation where
    the batch goes; the batch's seed is its first image's."""

    def __init__(self, dataset: InMemoryDataset) -> None:
        images = torch.from_numpy(dataset.images)  # shared with the dataset, not copied
        self._images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
        self._labels = torch.from_numpy(dataset.labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index = torch.tensor([i for i, _ in keys])
        return self._images[index].contiguous(), self._labels[index], keys[0][1]


def _already_batched(batch: tuple) -> tuple:
    return batch


def _worker_errors(loader: DataLoader) -> Iterator:
    """``loader``'s batches, with what goes wrong in its worker processes as one line: the
    DataLoader re-raises a worker's error with the worker's whole traceback as its message, and
    reports a worker that died (killed, out of memory) as a RuntimeError."""
    try:
        yield from loader
    except ResnetServeError as exc:
        # "Caught DatasetError in DataLoader worker process 0. Original Traceback ... <module>.DatasetError: <message>"
        last = str(exc).rstrip().splitlines()[-1]
        raise type(exc)(last.split(": ", 1)[1] if last.startswith("resnet_serve.") else last) from None
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise TrainingError(f"{first_line(exc)}; the photos are read by --workers processes") from None


class TrainBatches:
    """One epoch of this process's training batches, on the device, normalised and augmented:
    ``set_epoch(e)`` then iterate; ``len()`` is the steps per epoch."""

    def __init__(
        self,
        loader: DataLoader,
        sampler: EpochSampler,
        *,
        on_device: BatchAugmentation | None,
        device: torch.device,
        memory_format: torch.memory_format,
    ) -> None:
        self._loader, self._sampler, self._on_device = loader, sampler, on_device
        self._device, self._memory_format = device, memory_format

    def set_epoch(self, epoch: int) -> None:
        self._sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in _worker_errors(self._loader):
            inputs = batch[0].to(self._device, non_blocking=True)
            if self._on_device is not None:
                with seeded(batch[2]):
                    inputs = self._on_device(inputs)
            yield inputs.contiguous(memory_format=self._memory_format), batch[1].to(self._device, non_blocking=True)


def _reduce_to_side(size: int, crop_scale: tuple[float, float], crop_ratio: tuple[float, float]) -> int:
    """The shorter side a photo may be reduced to before cropping without its smallest crop
    (``crop_scale[0]`` of the area at the most elongated ratio) falling under ``size`` pixels."""
    smallest_fraction_of_side = (crop_scale[0] / max(crop_ratio[1], 1 / crop_ratio[0])) ** 0.5
    return int(np.ceil(size / smallest_fraction_of_side))


def train_batches(
    train: Dataset,
    *,
    config: TrainConfig,
    preprocessing: Preprocessing,
    world: World,
    device: torch.device,
) -> TrainBatches:
    """The training DataLoader of this process: per-process batch ``config.batch_size`` / world
    size, the last incomplete batch dropped (a tiny batch gives BatchNorm noisy statistics)."""
    if config.batch_size % world.world_size:
        raise TrainingError(
            f"batch_size {config.batch_size} does not split evenly over {world.world_size} processes"
        )
    per_process = config.batch_size // world.world_size
    sampler = EpochSampler(len(train), world=world, seed=config.seed)
    batches = BatchSampler(sampler, batch_size=per_process, drop_last=True)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    pin = device.type == "cuda"
    if isinstance(train, InMemoryDataset):
        loader = DataLoader(
            _InMemoryTrainSet(train), batch_sampler=batches, collate_fn=_already_batched, pin_memory=pin
        )
        augmentation = BatchAugmentation(
            config, size=(preprocessing.height, preprocessing.width), mean=preprocessing.mean, std=preprocessing.std
        )
        return TrainBatches(loader, sampler, on_device=augmentation, device=device, memory_format=memory_format)
    augmentation = PhotoAugmentation(config, size=preprocessing.height, mean=preprocessing.mean, std=preprocessing.std)
    workers = cores_per_process(world) if config.workers is None else config.workers
    dataset = _PhotoTrainSet(
        train, channels=preprocessing.channels, augmentation=augmentation,
        min_side=_reduce_to_side(preprocessing.height, config.crop_scale, config.crop_ratio),
    )
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin
    )
    return TrainBatches(loader, sampler, on_device=None, device=device, memory_format=memory_format)


class _PhotoEvalSet(torch.utils.data.Dataset):
    """One photo prepared exactly as the server prepares it."""

    def __init__(self, folder: ImageFolder, preprocessing: Preprocessing) -> None:
        self._files = np.array([os.fsencode(path) for path in folder.files])
        self._labels = folder.labels
        self._preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = Path(os.fsdecode(self._files[index]))
        return prepare_image_file(path, self._preprocessing), int(self._labels[index])


def val_batches(
    val: Dataset,
    *,
    preprocessing: Preprocessing,
    world: World,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the validation images (every world-size-th, none twice), as
    float32 N×C×H×W inputs prepared by ``preprocessing`` and their labels, on the CPU."""
    share: Sequence[int] = range(world.rank, len(val), world.world_size)
    if isinstance(val, InMemoryDataset):
        indices = np.asarray(share)
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            yield torch.from_numpy(preprocessing.normalize(val.images[part])), torch.from_numpy(val.labels[part])
        return
    loader = DataLoader(
        _PhotoEvalSet(val, preprocessing), batch_size=batch_size, sampler=list(share), num_workers=workers
    )
    yield from _worker_errors(loader)
