"""Classify image files on a running server, prepared exactly as the served model says."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from resnet_serve.client.inference import InferenceClient, Prediction, Protocol, rank_classes
from resnet_serve.errors import ClientError


@dataclass(frozen=True)
class ImageClassification:
    path: str
    predictions: list[Prediction]


@dataclass(frozen=True)
class ClassificationResult:
    model: str
    protocol: str
    url: str
    images: list[ImageClassification]

    def to_dict(self) -> dict:
        return asdict(self)


def classify_files(
    *,
    paths: Sequence[Path],
    model: str | None = None,
    protocol: Protocol = "http",
    url: str | None = None,
    top_k: int = 3,
) -> ClassificationResult:
    """Top-k classes of each image, with softmax probabilities over the served logits.

    Every file is read and checked before the first request, so one bad file costs no traffic.
    """
    if top_k < 1:
        raise ClientError(f"--top-k must be at least 1, got {top_k}")
    with InferenceClient(model=model, protocol=protocol, url=url) as client:
        served = client.model
        batch = np.stack([served.preprocessing.load_image(path) for path in paths])
        limit = served.max_batch_size or len(batch)
        logits = np.concatenate(
            [client.infer(batch[i : i + limit]) for i in range(0, len(batch), limit)]
        )
        ranked = rank_classes(logits, served.class_names, k=min(top_k, served.num_classes))
        return ClassificationResult(
            model=served.name,
            protocol=client.protocol,
            url=client.url,
            images=[ImageClassification(str(p), r) for p, r in zip(paths, ranked, strict=True)],
        )

