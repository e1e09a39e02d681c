"""Realistic inputs and weights for measuring without a trained model: real photo crops, and
ways to give a freshly initialised ResNet the BatchNorm statistics and weight magnitudes of a
trained one.

Speed does not depend on weight values, but folding, rounding and quantization errors do: a fresh
ResNet's BatchNorms are identities, which makes folding a no-op, and its logits are tiny. The
benchmarks and the tests use these to measure what a trained model would show.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from resnet_serve.errors import MissingDependencyError

__all__ = ["photo_crops", "with_realistic_batchnorm", "with_trained_magnitudes"]

# Photos that ship inside scikit-image's wheel, in colour and of different sizes.
_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_crops(count: int, *, size: int) -> np.ndarray:
    """``count`` real RGB photo crops, uint8 (count, size, size, 3): square crops at several
    places of scikit-image's bundled photos, each photo's shorter side first scaled to
    ``size`` × 1.25 so a crop shows a good part of it.

    Raises:
        MissingDependencyError: scikit-image (a dev dependency) is not installed.
    """
    try:
        import skimage.data
    except ImportError:
        raise MissingDependencyError(
            "scikit-image is not installed; it holds the photos that photo_crops cuts "
            "(a dev dependency: `make install`, or `pip install scikit-image`)"
        ) from None
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


def with_trained_magnitudes(
    model: nn.Module, images: torch.Tensor, *, seed: int, largest_logit: float = 30.0
) -> nn.Module:
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
