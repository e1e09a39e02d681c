"""A tiny image classifier exported to ONNX the way resnet-serve exports ResNets.

Shared by the Triton tests: input "input" FP32 [batch, 1, 28, 28], output "logits" FP32
[batch, 10], dynamic batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from samples import FASHION_PREPROCESSING
from torch import nn

from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter
from resnet_serve.triton.repository import ENTRY_LOCK_TIMEOUT_S, Classifier, ModelEntry, write_model_entry
from resnet_serve.triton.serving import ServingOptions

INPUT_SHAPE = (1, 28, 28)
CLASS_NAMES = [f"class_{i}" for i in range(10)]
PREPROCESSING = FASHION_PREPROCESSING


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


def write_entry(
    *,
    repository: Path,
    name: str,
    model_file: Path,
    class_names: Sequence[str] = CLASS_NAMES,
    preprocessing: Preprocessing = PREPROCESSING,
    metadata: Mapping[str, str] | None = None,
    warmup_images: np.ndarray | None = None,
    lock_timeout_s: float = ENTRY_LOCK_TIMEOUT_S,
    reporter: Reporter | None = None,
    **settings: Any,
) -> ModelEntry:
    """``write_model_entry`` of a classifier (the tiny one's classes and preprocessing unless
    given), ``settings`` being ServingOptions' fields; a target may be given as a ServingTarget."""
    target = settings.pop("target", "onnxruntime")
    return write_model_entry(
        repository=repository, name=name,
        classifier=Classifier(model_file=model_file, class_names=tuple(class_names), preprocessing=preprocessing,
                              metadata=metadata or {}),
        settings=ServingOptions(target=getattr(target, "name", target), **settings),
        warmup_images=warmup_images, lock_timeout_s=lock_timeout_s, reporter=reporter,
    )
