"""Real inputs shared by the test modules: Fashion-MNIST test images (the Debian package that
`make test` installs) and models whose BatchNorms hold realistic statistics."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from resnet_serve.datasets import InMemoryDataset, load_default_dataset
from resnet_serve.preprocessing import Preprocessing

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
