"""A tiny image classifier exported to ONNX the way resnet-serve exports ResNets.

Shared by the Triton tests: input "input" FP32 [batch, 1, 28, 28], output "logits" FP32
[batch, 10], dynamic batch.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)
CLASS_NAMES = [f"class_{i}" for i in range(10)]
FASHION_MNIST_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
PREPROCESSING: dict[str, object] = {
    "channels": 1,
    "height": 28,
    "width": 28,
    "mean": [0.286],
    "std": [0.353],
    "interpolation": "bilinear",
}


class TinyClassifier(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x))
        return self.head(nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))


def export_tiny_classifier(
    path: Path, *, num_classes: int = 10, dynamic_batch: bool = True, seed: int = 0
) -> TinyClassifier:
    torch.manual_seed(seed)
    model = TinyClassifier(num_classes).eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but is what the project uses for ResNets.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.randn(1, *INPUT_SHAPE),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=(
                {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            ),
        )
    return model


def sample_images(count: int, *, seed: int = 0) -> np.ndarray:
    """`count` normalised [count, 1, 28, 28] FP32 images: Fashion-MNIST test images when the
    Debian package `dataset-fashion-mnist` is installed (as `make test` ensures), else seeded
    noise of the same range."""
    if FASHION_MNIST_TEST_IMAGES.is_file():
        with gzip.open(FASHION_MNIST_TEST_IMAGES) as file:
            # IDX format: 16-byte header, then uint8 pixels row by row.
            pixels = np.frombuffer(file.read(16 + count * 28 * 28)[16:], dtype=np.uint8)
        images = pixels.reshape(count, *INPUT_SHAPE).astype(np.float32) / 255.0
    else:
        images = np.random.default_rng(seed).random((count, *INPUT_SHAPE), dtype=np.float32)
    mean = np.float32(PREPROCESSING["mean"][0])  # type: ignore[index]
    std = np.float32(PREPROCESSING["std"][0])  # type: ignore[index]
    return (images - mean) / std
