"""Accuracy of a served model on a labelled test set, and its agreement with a reference.

The test set is streamed: ``concurrency`` workers, each with its own client, take batches in
turn from one :func:`resnet_serve.datasets.batches` iterator, send them to the server and add
the answers to running counts. Reading a batch (decoding its files) is done by one worker at a
time while the others wait on the server, and memory holds about ``concurrency`` batches
whatever the size of the test set.

When the server stops answering part of the way (it died, it was stopped), what was measured
is not thrown away: :class:`PartialEvaluationError` carries the result over the images answered
so far, marked ``partial``, for the caller to keep and to report as the failure it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from resnet_serve.client.connection import ConnectionOptions, Protocol
from resnet_serve.client.inference import InferenceClient, ServedModel
from resnet_serve.datasets import Dataset, batches, load_dataset
from resnet_serve.errors import ClientError
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter


@dataclass(frozen=True)
class EvaluationResult:
    """Figures over ``images`` test images; fewer than ``images_requested`` only when
    ``partial``, the server having failed with ``stopped_by`` before the rest were answered."""

    model: str
    protocol: str
    url: str
    images: int
    images_requested: int
    batch_size: int
    concurrency: int
    top1: float
    top5: float
    agreement: float | None  # fraction whose served top-1 equals the reference's; None without one
    reference_top1: float | None
    max_abs_logit_difference: float | None
    seconds: float
    images_per_second: float
    class_names: list[str]  # the served model's
    # confusion_matrix[true][predicted]: image counts, classes × classes in the model's order.
    confusion_matrix: list[list[int]]
    per_class_accuracy: list[float | None]  # top-1 per true class; None for a class with no test images
    partial: bool = False
    stopped_by: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class PartialEvaluationError(ClientError):
    """The server failed part of the way; ``result`` holds the figures of the images it answered."""

    def __init__(self, result: EvaluationResult) -> None:
        super().__init__(
            f"the evaluation stopped after {result.images} of {result.images_requested} images: {result.stopped_by}"
        )
        self.result = result


class _Tally:
    """Running counts over the batches answered so far. Not thread-safe: callers hold a lock."""

    def __init__(self, num_classes: int) -> None:
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.top5_hits = 0
        self.agreements = 0
        self.reference_hits = 0
        self.max_abs = 0.0

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    def add(self, logits: np.ndarray, labels: np.ndarray, reference_logits: np.ndarray | None) -> None:
        classes = len(self.confusion)
        predictions = logits.argmax(axis=1)
        self.confusion += np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(
            classes, classes
        )
        top5 = np.argsort(-logits, axis=1)[:, :5]
        self.top5_hits += int((top5 == labels[:, None]).any(axis=1).sum())
        if reference_logits is not None:
            reference = reference_logits.argmax(axis=1)
            self.agreements += int((predictions == reference).sum())
            self.reference_hits += int((reference == labels).sum())
            self.max_abs = max(self.max_abs, float(np.abs(logits - reference_logits).max()))


def _check_counts(*, limit: int | None, batch_size: int, concurrency: int) -> None:
    for name, value in (("--limit", limit), ("--batch-size", batch_size), ("--concurrency", concurrency)):
        if value is not None and value < 1:
            raise ClientError(f"{name} must be at least 1, got {value}")


def evaluate_served_model(
    *,
    connect: Callable[[], InferenceClient],
    model: ServedModel,
    dataset: Dataset,
    limit: int | None = None,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 64,
    concurrency: int = 2,
    reporter: Reporter | None = None,
) -> EvaluationResult:
    """Send the first ``limit`` images of ``dataset`` (all by default) through the server.

    Each batch is read only when a worker takes it, prepared with ``model.preprocessing``, and
    sent from one of ``concurrency`` workers, each with its own client from ``connect``.

    Args:
        connect: opens a client of the served model; called once per worker, in its thread.
        model: what the server said about the model (its preprocessing and classes).
        dataset: labelled images whose labels index the model's classes.
        limit: evaluate only the first this many images.
        reference: logits of the same prepared batch from a reference (e.g. PyTorch), for the
            agreement figures; called from the workers' threads.
        batch_size: images per request, at most the model's ``max_batch_size``.
        concurrency: requests in flight.

    Raises:
        PartialEvaluationError: the server failed after answering some of the images; its
            ``result`` covers those.
        ClientError: the server failed before answering any, or a count is below 1.
    """
    _check_counts(limit=limit, batch_size=batch_size, concurrency=concurrency)
    if len(dataset.class_names) > model.num_classes:
        raise ClientError(
            f"the test set has {len(dataset.class_names)} classes but model {model.name!r} "
            f"answers {model.num_classes}"
        )
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total == 0:
        raise ClientError("the test set has no images")
    reporter = reporter or SilentReporter()
    stream = batches(dataset, preprocessing=model.preprocessing, batch_size=batch_size, indices=range(total))
    tally = _Tally(model.num_classes)
    lock = threading.Lock()
    failed = threading.Event()
    clients: list[InferenceClient] = []

    def work() -> None:
        # Each worker opens, uses and closes its own client in its own thread: the HTTP
        # client is bound to the thread that created it.
        try:
            with connect() as client:
                clients.append(client)
                while not failed.is_set():
                    with lock:
                        batch = next(stream, None)
                    if batch is None:
                        return
                    inputs, labels = batch
                    logits = client.infer(inputs)
                    reference_logits = None if reference is None else reference(inputs)
                    with lock:
                        tally.add(logits, labels, reference_logits)
                    reporter.advance(len(labels))
        except BaseException:
            failed.set()  # the other workers stop after their current batch
            raise

    reporter.start(f"evaluating {total} images", total=total)
    began = time.perf_counter()
    stopped_by: ClientError | None = None
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for future in [pool.submit(work) for _ in range(concurrency)]:
                try:
                    future.result()
                except ClientError as error:
                    stopped_by = stopped_by or error
    finally:
        reporter.finish()
    seconds = time.perf_counter() - began
    done = tally.images
    if done == total:
        stopped_by = None  # every image was answered: a worker failing after that lost nothing
    elif done == 0 and stopped_by is not None:
        raise stopped_by
    confusion = tally.confusion
    correct = np.diag(confusion)
    per_class = confusion.sum(axis=1)
    with_reference = reference is not None
    result = EvaluationResult(
        model=model.name,
        protocol=clients[0].protocol,
        url=clients[0].url,
        images=done,
        images_requested=total,
        batch_size=batch_size,
        concurrency=concurrency,
        top1=float(correct.sum() / done),
        top5=tally.top5_hits / done,
        agreement=tally.agreements / done if with_reference else None,
        reference_top1=tally.reference_hits / done if with_reference else None,
        max_abs_logit_difference=tally.max_abs if with_reference else None,
        seconds=seconds,
        images_per_second=done / seconds,
        class_names=list(model.class_names),
        confusion_matrix=confusion.tolist(),
        per_class_accuracy=[float(c / n) if n else None for c, n in zip(correct, per_class, strict=True)],
        partial=stopped_by is not None,
        stopped_by=None if stopped_by is None else str(stopped_by),
    )
    if stopped_by is not None:
        raise PartialEvaluationError(result)
    return result


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
    connection: ConnectionOptions | None = None,
) -> EvaluationResult:
    """Evaluate a served model on the test split of ``data_dir`` (Fashion-MNIST by default; any
    format ``load_dataset`` reads, ImageFolder trees of images of any size included), prepared
    with the preprocessing the server reports; with ``checkpoint``, also its agreement with
    PyTorch. Counts below 1 are refused before the server is asked anything."""
    _check_counts(limit=limit, batch_size=batch_size, concurrency=concurrency)
    with InferenceClient(model=model, protocol=protocol, url=url, connection=connection) as probe:
        served = probe.model
    test_set = load_dataset(data_dir, split="test")
    return evaluate_served_model(
        connect=partial(InferenceClient, model=served.name, protocol=protocol, url=url, connection=connection),
        model=served,
        dataset=test_set,
        limit=limit,
        reference=None if checkpoint is None else _reference_model(checkpoint, served.preprocessing),
        batch_size=min(batch_size, served.max_batch_size or batch_size),
        concurrency=concurrency,
        reporter=reporter,
    )


def _reference_model(checkpoint: Path, served_preprocessing: Preprocessing) -> Callable[[np.ndarray], np.ndarray]:
    # torch is only needed for the agreement check, so a pure client does not import it.
    from resnet_serve.checkpoints import load_checkpoint
    from resnet_serve.runtimes import TorchRuntime

    loaded = load_checkpoint(checkpoint)
    if loaded.meta.preprocessing != served_preprocessing:
        raise ClientError(
            f"{checkpoint} prepares images as {loaded.meta.preprocessing.to_dict()} but the served "
            f"model as {served_preprocessing.to_dict()}: they are not the same model"
        )
    # Inference only: one module answers the workers' threads at once.
    return TorchRuntime(loaded.model).run
