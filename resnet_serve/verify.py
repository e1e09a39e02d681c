"""Numerical parity between two runtimes on real images.

A runtime (``resnet_serve.runtimes``) is anything with a ``name`` and a ``run(batch) -> logits``
over float32 NCHW numpy arrays. ``compare_runtimes`` measures, ``check_parity`` judges, and
``verify_runtimes`` does both for two named kinds built from one checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from resnet_serve.checkpoints import load_checkpoint
from resnet_serve.datasets import load_dataset
from resnet_serve.errors import VerificationError
from resnet_serve.export.quantize import CalibrationMethodName

# The runtimes lived here first; they are re-exported so that existing imports keep working.
from resnet_serve.runtimes import OnnxRuntime, Runtime, RuntimeFactory, TorchRuntime, as_batch

__all__ = [
    "BatchParity",
    "OnnxRuntime",
    "ParityResult",
    "Runtime",
    "TorchRuntime",
    "VerifyReport",
    "check_parity",
    "compare_runtimes",
    "run_batched",
    "verify_onnx_export",
    "verify_runtimes",
]


@dataclass(frozen=True)
class BatchParity:
    """Agreement of the candidate with the reference when run at one batch size.

    ``mean_rel`` is mean |candidate − reference| / mean |reference|: a relative error that
    stays finite when single logits are near zero. ``top1_accuracy`` is the candidate's, when
    labels were given.
    """

    batch_size: int
    max_abs: float
    mean_rel: float
    top1_agreement: float
    top1_accuracy: float | None = None


@dataclass(frozen=True)
class ParityResult:
    """Parity over ``n_images``; the top-level figures are the worst over all batch sizes.

    With labels, ``reference_top1`` and ``candidate_top1`` are the runtimes' top-1 accuracy
    (the candidate's worst over the batch sizes).
    """

    reference: str
    candidate: str
    n_images: int
    max_abs: float
    mean_rel: float
    top1_agreement: float
    per_batch: tuple[BatchParity, ...]
    reference_top1: float | None = None
    candidate_top1: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def compare_runtimes(
    reference: Runtime,
    candidate: Runtime,
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    labels: np.ndarray | None = None,
) -> ParityResult:
    """Run ``images`` through both runtimes and measure how far the candidate's logits stray.

    With ``labels`` (one class index per image) both runtimes' top-1 accuracy is measured too.

    The reference runs once, in batches of the largest size; the candidate runs all images at
    every size in ``batch_sizes`` (the last batch may be smaller), since batch-dependent
    kernels are a common source of divergence.

    Raises:
        VerificationError: no images, a bad batch size, labels that do not match the images,
            or outputs of different shapes.
    """
    images = as_batch(images)
    if len(images) == 0:
        raise VerificationError("parity needs at least one image")
    if labels is not None and np.shape(labels) != (len(images),):
        raise VerificationError(f"{len(images)} images but labels of shape {np.shape(labels)}")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise VerificationError(f"batch sizes must be positive, got {tuple(batch_sizes)}")

    expected = run_batched(reference, images, max(batch_sizes))
    per_batch = []
    for batch_size in batch_sizes:
        actual = run_batched(candidate, images, batch_size)
        if actual.shape != expected.shape:
            raise VerificationError(
                f"{candidate.name} returned logits of shape {actual.shape} at batch "
                f"{batch_size}, {reference.name} {expected.shape}"
            )
        difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        scale = max(float(np.abs(expected).mean()), np.finfo(np.float32).tiny)
        per_batch.append(
            BatchParity(
                batch_size=batch_size,
                max_abs=float(difference.max()),
                mean_rel=float(difference.mean() / scale),
                top1_agreement=float((actual.argmax(1) == expected.argmax(1)).mean()),
                top1_accuracy=_accuracy(actual, labels),
            )
        )
    return ParityResult(
        reference=reference.name,
        candidate=candidate.name,
        n_images=len(images),
        max_abs=max(p.max_abs for p in per_batch),
        mean_rel=max(p.mean_rel for p in per_batch),
        top1_agreement=min(p.top1_agreement for p in per_batch),
        per_batch=tuple(per_batch),
        reference_top1=_accuracy(expected, labels),
        candidate_top1=None if labels is None else min(p.top1_accuracy for p in per_batch),
    )


def check_parity(
    result: ParityResult,
    *,
    atol: float | None,
    min_top1_agreement: float | None = 1.0,
    max_mean_rel: float | None = None,
    max_top1_drop: float | None = None,
) -> None:
    """Raise VerificationError unless every batch size meets every threshold given (None
    skips one): logits within ``atol`` and ``max_mean_rel``, top-1 agreement at least
    ``min_top1_agreement``, and top-1 accuracy at most ``max_top1_drop`` (a fraction) below
    the reference's, which needs a result measured with labels."""
    if max_top1_drop is not None and result.reference_top1 is None:
        raise VerificationError("a top-1 accuracy threshold needs a comparison made with labels")
    for parity in result.per_batch:
        at = f"at batch {parity.batch_size}"
        if atol is not None and parity.max_abs > atol:
            raise VerificationError(
                f"{result.candidate} differs from {result.reference} by up to "
                f"{parity.max_abs:.3g} {at} (tolerance {atol:g})"
            )
        if max_mean_rel is not None and parity.mean_rel > max_mean_rel:
            raise VerificationError(
                f"{result.candidate}'s mean relative error against {result.reference} is "
                f"{parity.mean_rel:.3g} {at} (tolerance {max_mean_rel:g})"
            )
        if min_top1_agreement is not None and parity.top1_agreement < min_top1_agreement:
            raise VerificationError(
                f"{result.candidate} agrees with {result.reference} on the top-1 class of only "
                f"{parity.top1_agreement:.2%} of {result.n_images} images {at} "
                f"(needed {min_top1_agreement:.2%})"
            )
        if max_top1_drop is not None:
            drop = result.reference_top1 - parity.top1_accuracy
            if drop > max_top1_drop:
                raise VerificationError(
                    f"{result.candidate} loses {drop * 100:.2f} points of top-1 accuracy against "
                    f"{result.reference} {at} ({parity.top1_accuracy:.2%} vs "
                    f"{result.reference_top1:.2%}; allowed {max_top1_drop * 100:.2f})"
                )


def verify_onnx_export(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    *,
    atol: float = 1e-4,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
) -> ParityResult:
    """Check that onnxruntime on ``onnx_path`` reproduces ``model`` on ``images``.

    Runs batch 1 and a larger batch by default; needs at least as many images as the
    largest batch size, so that size is really exercised.

    Raises:
        VerificationError: too few images, an unloadable file, logits further apart than
            ``atol``, or any image whose top-1 class differs.
    """
    if len(images) < max(batch_sizes):
        raise VerificationError(
            f"verifying batch {max(batch_sizes)} needs at least that many images, got {len(images)}"
        )
    result = compare_runtimes(
        TorchRuntime(model),
        OnnxRuntime(onnx_path, threads=threads),
        images,
        batch_sizes=batch_sizes,
    )
    check_parity(result, atol=atol)
    return result


@dataclass(frozen=True)
class VerifyReport:
    """Two runtimes of one checkpoint compared on labelled real test images.

    ``notes`` says, per runtime, how it was made or what it really computes in (INT8
    calibration, an OpenVINO precision the CPU cannot honour).
    """

    checkpoint: str
    architecture: str
    parity: ParityResult
    batch_sizes: tuple[int, ...]
    notes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def verify_runtimes(
    *,
    checkpoint: str | os.PathLike[str],
    reference: str,
    candidate: str,
    images: int = 1000,
    calibration_images: int = 256,
    calibration_method: CalibrationMethodName = "minmax",
    batch_sizes: Sequence[int] = (1, 64),
    data_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> VerifyReport:
    """Build two runtime kinds (``resnet_serve.runtimes.RUNTIME_KINDS``) from a checkpoint and
    compare them on its first ``images`` test images, labels included.

    INT8 kinds are calibrated on ``calibration_images`` training images drawn at random (seeded)
    from the training split. Every file is produced in a temporary folder that is removed
    afterwards. Thresholds are judged separately, by ``check_parity``.

    Raises:
        VerificationError: an unknown kind or bad counts; the errors of the stages it runs.
    """
    began = time.perf_counter()
    if images < 1 or calibration_images < 1:
        raise VerificationError(
            f"image counts must be ≥ 1, got {images} test and {calibration_images} calibration images"
        )
    loaded = load_checkpoint(checkpoint)
    preprocessing = loaded.meta.preprocessing
    test_set = load_dataset(data_dir, split="test")
    first = range(min(images, len(test_set)))
    test_images = test_set.read(first, preprocessing=preprocessing)
    labels = test_set.labels[first]
    calibration = None
    if "int8" in reference or "int8" in candidate:
        train_set = load_dataset(data_dir, split="train")
        count = min(calibration_images, len(train_set))
        chosen = np.sort(np.random.default_rng(0).choice(len(train_set), size=count, replace=False))
        calibration = train_set.read(chosen, preprocessing=preprocessing)

    with tempfile.TemporaryDirectory(prefix="resnet-serve-verify-") as scratch:
        factory = RuntimeFactory(
            loaded,
            workdir=scratch,
            calibration_images=calibration,
            calibration_method=calibration_method,
            threads=threads,
        )
        runtimes = factory.build(reference), factory.build(candidate)
        parity = compare_runtimes(*runtimes, test_images, batch_sizes=batch_sizes, labels=labels)
    return VerifyReport(
        checkpoint=str(checkpoint),
        architecture=loaded.meta.architecture,
        parity=parity,
        batch_sizes=tuple(batch_sizes),
        notes=dict(factory.notes),
        seconds=time.perf_counter() - began,
    )


def run_batched(runtime: Runtime, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of all ``images``, run ``batch_size`` at a time (the last batch may be smaller)."""
    outputs = [runtime.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(1) == labels).mean())
