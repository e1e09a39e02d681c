"""Real inputs shared by the test modules: Fashion-MNIST test images (the Debian package that
`make test` installs) and models whose BatchNorms hold realistic statistics."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from resnet_serve.datasets import InMemoryDataset, load_default_dataset
from resnet_serve.preprocessing import Preprocessing

if TYPE_CHECKING:
    from resnet_serve.checkpoints import CheckpointMeta

FASHION_PREPROCESSING = Preprocessing(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,))


@lru_cache(maxsize=1)
def fashion_test_set() -> InMemoryDataset:
    return load_default_dataset(split="test")


def fashion_mnist(count: int) -> np.ndarray:
    """The first ``count`` Fashion-MNIST test images, normalised, float32 (N, 1, 28, 28)."""
    return FASHION_PREPROCESSING.normalize(fashion_test_set().images[:count])


def with_realistic_batchnorm(model: nn.Module, images: torch.Tensor, *, seed: int) -> nn.Module:
    """Give every BatchNorm running statistics measured on ``images`` and random γ, β, so
    folding has real work to do while the logits keep a sensible scale."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


# Photos that ship inside scikit-image's wheel, in colour and of different sizes.
_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_crops(count: int, *, size: int) -> np.ndarray:
    """``count`` real RGB photo crops, uint8 (count, size, size, 3): square crops at several
    places of scikit-image's bundled photos, each photo's shorter side first scaled to
    ``size`` × 1.25 so a crop shows a good part of it."""
    import skimage.data
    from PIL import Image

    crops = []
    for index in range(count):
        photo = Image.fromarray(getattr(skimage.data, _PHOTOS[index % len(_PHOTOS)])())
        scale = size * 1.25 / min(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BILINEAR)
        turn = index // len(_PHOTOS)
        left = (turn * 37) % (photo.width - size + 1)
        top = (turn * 23) % (photo.height - size + 1)
        crops.append(np.asarray(photo.crop((left, top, left + size, top + size))))
    return np.stack(crops)


def with_trained_magnitudes(model: nn.Module, images: torch.Tensor, *, seed: int, largest_logit: float = 30.0) -> nn.Module:
    """Give a freshly initialised ResNet the magnitudes a trained one has: convolution channels
    whose scales spread over two decades (so BatchNorm running variances spread over four and
    folding multiplies weights by factors far from 1), BatchNorm statistics measured on
    ``images``, and a classifier scaled so the largest logit on ``images`` is ``largest_logit``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                spread = 10 ** (torch.rand(m.out_channels, generator=generator) * 2 - 1)
                m.weight.mul_(spread.reshape(-1, 1, 1, 1))
    model = with_realistic_batchnorm(model, images, seed=seed)
    with torch.no_grad():
        scale = largest_logit / model(images).abs().max()
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model


def photo_image_folder(root: Path, *, classes: int, per_class: int, size: int) -> Path:
    """An ImageFolder tree of real photo crops (PNG, size×size) under ``root/val/<class>/``,
    which is what the ``test`` split of an ImageFolder tree reads."""
    from PIL import Image

    crops = photo_crops(classes * per_class, size=size)
    for index, crop in enumerate(crops):
        folder = root / "val" / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{index:03d}.png")
    return root


def fashion_resnet20(*, seed: int) -> tuple[nn.Module, CheckpointMeta]:
    """An untrained ResNet-20 for Fashion-MNIST whose BatchNorms hold statistics of real test
    images, with the metadata a checkpoint of it carries."""
    from resnet_serve.checkpoints import CheckpointMeta
    from resnet_serve.models import create_model

    torch.manual_seed(seed)
    model = with_realistic_batchnorm(create_model("resnet20", in_channels=1), torch.from_numpy(fashion_mnist(32)), seed=seed)
    meta = CheckpointMeta(
        architecture="resnet20", num_classes=10, in_channels=1,
        class_names=[f"class {i}" for i in range(10)], preprocessing=FASHION_PREPROCESSING,
    )
    return model, meta
