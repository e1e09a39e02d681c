"""Accuracy of a served model on a labelled test set, and its agreement with a reference."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from resnet_serve.client.inference import InferenceClient, Protocol
from resnet_serve.data import Preprocessing, load_dataset
from resnet_serve.errors import ClientError
from resnet_serve.progress import Reporter, SilentReporter


@dataclass(frozen=True)
class EvaluationResult:
    model: str
    protocol: str
    url: str
    images: int
    batch_size: int
    concurrency: int
    top1: float
    top5: float
    agreement: float | None  # fraction whose served top-1 equals the reference's; None without one
    reference_top1: float | None
    max_abs_logit_difference: float | None
    seconds: float
    images_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_served_model(
    *,
    connect: Callable[[], InferenceClient],
    images: np.ndarray,
    labels: np.ndarray,
    reference_logits: np.ndarray | None = None,
    batch_size: int = 64,
    concurrency: int = 2,
    reporter: Reporter | None = None,
) -> EvaluationResult:
    """Send every image (preprocessed, [N, C, H, W]) through the server in batches from
    ``concurrency`` workers, each with its own client from ``connect``."""
    reporter = reporter or SilentReporter()
    starts = list(range(0, len(images), batch_size))
    logits: np.ndarray | None = None
    served: list[InferenceClient] = []

    def run(shard: list[int]) -> None:
        # Each worker opens, uses and closes its own client in its own thread: the HTTP
        # client is bound to the thread that created it.
        nonlocal logits
        with connect() as client:
            served.append(client)
            for start in shard:
                batch_logits = client.infer(images[start : start + batch_size])
                if logits is None:
                    logits = np.empty((len(images), batch_logits.shape[1]), dtype=np.float32)
                logits[start : start + len(batch_logits)] = batch_logits
                reporter.advance(len(batch_logits))

    reporter.start(f"evaluating {len(images)} images", total=len(images))
    began = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(run, starts[i::concurrency]) for i in range(concurrency)]:
                future.result()
    finally:
        reporter.finish()
    seconds = time.perf_counter() - began
    assert logits is not None

    predictions = logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    agreement = reference_top1 = max_abs = None
    if reference_logits is not None:
        reference = reference_logits.argmax(axis=1)
        agreement = float((predictions == reference).mean())
        reference_top1 = float((reference == labels).mean())
        max_abs = float(np.abs(logits - reference_logits).max())
    return EvaluationResult(
        model=served[0].model.name,
        protocol=served[0].protocol,
        url=served[0].url,
        images=len(images),
        batch_size=batch_size,
        concurrency=concurrency,
        top1=float((predictions == labels).mean()),
        top5=float((top5 == labels[:, None]).any(axis=1).mean()),
        agreement=agreement,
        reference_top1=reference_top1,
        max_abs_logit_difference=max_abs,
        seconds=seconds,
        images_per_second=len(images) / seconds,
    )


def evaluate_test_set(
    *,
    model: str | None = None,
    protocol: Protocol = "grpc",
    url: str | None = None,
    data_dir: Path | None = None,
    checkpoint: Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    concurrency: int = 2,
    reporter: Reporter | None = None,
) -> EvaluationResult:
    """Evaluate a served model on an IDX test split (Fashion-MNIST by default), prepared with the
    preprocessing the server reports; with ``checkpoint``, also its agreement with PyTorch."""
    if batch_size < 1 or concurrency < 1:
        raise ClientError(f"batch size and concurrency must be ≥ 1, got {batch_size} and {concurrency}")
    with InferenceClient(model=model, protocol=protocol, url=url) as probe:
        served = probe.model
    test_set = load_dataset(data_dir, split="test")
    count = len(test_set) if limit is None else min(limit, len(test_set))
    images = served.preprocessing.normalize(test_set.images[:count])
    labels = test_set.labels[:count]
    reference_logits = None
    if checkpoint is not None:
        reference_logits = _reference_logits(checkpoint, served.preprocessing, images, batch_size)
    return evaluate_served_model(
        connect=partial(InferenceClient, model=served.name, protocol=protocol, url=url),
        images=images,
        labels=labels,
        reference_logits=reference_logits,
        batch_size=min(batch_size, served.max_batch_size or batch_size),
        concurrency=concurrency,
        reporter=reporter,
    )


def _reference_logits(
    checkpoint: Path, served_preprocessing: Preprocessing, images: np.ndarray, batch_size: int
) -> np.ndarray:
    # torch is only needed for the agreement check, so a pure client does not import it.
    from resnet_serve.checkpoints import load_checkpoint
    from resnet_serve.runtimes import TorchRuntime, run_batched

    loaded = load_checkpoint(checkpoint)
    if loaded.meta.preprocessing != served_preprocessing:
        raise ClientError(
            f"{checkpoint} prepares images as {loaded.meta.preprocessing.to_dict()} but the served "
            f"model as {served_preprocessing.to_dict()}: they are not the same model"
        )
    return run_batched(TorchRuntime(loaded.model), images, batch_size)
