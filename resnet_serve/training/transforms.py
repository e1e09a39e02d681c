"""Training augmentation, from kornia: one preset for photos (per image, in the DataLoader's
workers) and one for in-memory sets (per batch, where the batch is).

torchvision's ``transforms.v2`` is the reference these follow (its classification presets:
random-resized crop, flip, TrivialAugment or RandAugment, normalise, random erasing), but
torchvision does not import beside the CPU build of torch this project installs. kornia does
the same operations on torch tensors (so also on a GPU), is maintained, and needs nothing but
torch; albumentations, the other candidate, works on numpy and has neither TrivialAugment nor
RandAugment.

Evaluation has no preset here: it is the checkpoint's ``Preprocessing`` (shorter-side resize,
centre crop, normalise, through Pillow), the same code that ``export``, the server's image
ensemble, ``classify`` and ``evaluate`` run, so validation measures what will be served.

Every random draw comes from torch's global generator, which the callers seed per image (or per
batch) from the run's seed, the epoch and the image's index, inside ``torch.random.fork_rng``:
an image is augmented the same way whichever worker, process or resumed run prepares it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from resnet_serve.training.recipes import TrainConfig

__all__ = ["BatchAugmentation", "PhotoAugmentation", "seeded", "to_unit_tensor"]

# RandAugment as torchvision's reference recipe runs it: 2 operations at magnitude 9 (kornia and
# torchvision share the paper's 0..30 magnitude scale).
_RAND_AUGMENT_OPS, _RAND_AUGMENT_MAGNITUDE = 2, 9


class seeded:  # noqa: N801 (a context manager used like a function)
    """Run a block with torch's CPU generator seeded, and give the caller's state back after."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._fork = torch.random.fork_rng(devices=[])

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self._seed)

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def to_unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 H×W or H×W×C pixels → float32 1×C×H×W in 0..1, the form kornia works on."""
    # Pillow's arrays are read-only; torch wants to own writable memory.
    tensor = torch.from_numpy(np.array(pixels) if not pixels.flags.writeable else np.ascontiguousarray(pixels))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor[None].float().div_(255.0)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    import kornia.augmentation as K

    return K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))


class PhotoAugmentation:
    """One decoded photo (any size) → a normalised C×size×size training input: random-resized
    crop, horizontal flip, optional TrivialAugment/RandAugment, normalise, random erasing."""

    def __init__(self, config: TrainConfig, *, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        # Imported here: kornia is only needed by training.
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment, TrivialAugment

        steps: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=config.crop_scale, ratio=config.crop_ratio),
        ]
        if config.flip:
            steps.append(K.RandomHorizontalFlip())
        if config.auto_augment == "trivial":
            steps.append(TrivialAugment())
        elif config.auto_augment == "rand":
            steps.append(RandAugment(n=_RAND_AUGMENT_OPS, m=_RAND_AUGMENT_MAGNITUDE))
        steps.append(_normalize(mean, std))
        # After normalising, as torchvision's presets do: the erased patch is the mean colour.
        if config.random_erase:
            steps.append(K.RandomErasing(p=config.random_erase))
        self._steps = nn.Sequential(*steps)
        self.size = size

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self._steps(to_unit_tensor(pixels))[0]


class BatchAugmentation:
    """A uint8 N×C×H×W batch of an in-memory set → normalised float32 inputs of the same size:
    random crops of the batch padded by ``pad`` black pixels, horizontal flips, random erasing."""

    def __init__(
        self, config: TrainConfig, *, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        import kornia.augmentation as K

        steps: list[nn.Module] = []
        if config.pad:
            steps.append(K.RandomCrop(size, padding=config.pad, fill=0.0))
        if config.flip:
            steps.append(K.RandomHorizontalFlip())
        steps.append(_normalize(mean, std))
        if config.random_erase:
            steps.append(K.RandomErasing(p=config.random_erase))
        self._steps = nn.Sequential(*steps)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._steps(batch.float().div_(255.0))
