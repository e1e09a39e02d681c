"""The arithmetic of agreement between two runtimes' logits: numbers in, a verdict out.

A leaf: it knows nothing of models, files or runtimes. ``ParityAccumulator`` takes the
reference's logits and the candidate's (run at one or more batch sizes) chunk by chunk, so a
comparison over a large image folder holds only running sums, never all the logits;
``check_parity`` judges the ``ParityResult`` against a ``Tolerance``.

Why the FP32 tolerance is relative: two correct float32 implementations of one network (PyTorch
and onnxruntime, a model and its BatchNorm-folded copy) sum in different orders, and the
rounding that re-association leaves grows with the network's depth and with the size of its
logits. An absolute bound that suits a ResNet-20 with logits near 5 refuses a faithful ResNet-50
with logits of a few tens. So the criterion is ``max|candidate − reference| ≤ rtol ×
max|reference|`` over the compared images, with the same top-1 class on every image, where an
image whose reference margin between the two classes is itself within that bound is a tie, not a
disagreement: rounding may legitimately flip it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from resnet_serve.errors import VerificationError

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_RTOL",
    "BatchParity",
    "ParityAccumulator",
    "ParityResult",
    "Tolerance",
    "check_parity",
]

# Measured on ResNet-20/50/152 (docs/export-and-verify.md): faithful FP32 copies stay below
# 1e-5 of the largest logit; a folded weight off by 1e-3 or a BatchNorm eps left out does not.
DEFAULT_RTOL = 1e-4
# An INT8 or FP16 copy changes logits by design; what it must keep is the top-1 class.
DEFAULT_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class BatchParity:
    """Agreement of the candidate with the reference when run at one batch size.

    Attributes:
        batch_size: the candidate's batch size (its last batch may be smaller).
        max_abs: largest |candidate − reference| over every logit.
        max_abs_relative: ``max_abs`` as a fraction of the largest |reference logit|.
        mean_rel: mean |candidate − reference| / mean |reference|, a relative error that stays
            finite when single logits are near zero.
        top1_agreement: fraction of images whose top-1 class is the reference's.
        disagreement_margins: for every image whose top-1 class differs, how far the
            reference put its own top-1 above the candidate's choice, as a fraction of the
            largest |reference logit|; ascending.
        top1_accuracy: the candidate's top-1 accuracy, when labels were given.
    """

    batch_size: int
    max_abs: float
    max_abs_relative: float
    mean_rel: float
    top1_agreement: float
    disagreement_margins: tuple[float, ...] = ()
    top1_accuracy: float | None = None

    def ties(self, rtol: float | None) -> int:
        """Disagreements whose reference margin is within ``rtol`` of the largest logit: the
        reference itself hardly tells those two classes apart."""
        return 0 if rtol is None else sum(margin <= rtol for margin in self.disagreement_margins)


@dataclass(frozen=True)
class ParityResult:
    """Parity over ``n_images``; the top-level figures are the worst over all batch sizes.

    ``reference_max_abs`` is the largest |reference logit| over the images, the scale the
    relative figures are measured against. With labels, ``reference_top1`` and
    ``candidate_top1`` are the runtimes' top-1 accuracy (the candidate's worst over the batch
    sizes).
    """

    reference: str
    candidate: str
    n_images: int
    reference_max_abs: float
    max_abs: float
    max_abs_relative: float
    mean_rel: float
    top1_agreement: float
    per_batch: tuple[BatchParity, ...]
    reference_top1: float | None = None
    candidate_top1: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Tolerance:
    """What a comparison must meet; None skips a threshold.

    Attributes:
        rtol: the largest logit difference allowed, as a fraction of the largest |reference
            logit|; it also decides which top-1 disagreements are ties.
        min_top1_agreement: least fraction of images with the reference's top-1 class (ties
            count as agreeing when ``rtol`` is set).
        max_mean_rel: largest mean relative logit error.
        max_top1_drop: largest loss of top-1 accuracy against the reference, a fraction (0.005
            is half a point); needs a comparison made with labels.
    """

    rtol: float | None = DEFAULT_RTOL
    min_top1_agreement: float | None = 1.0
    max_mean_rel: float | None = None
    max_top1_drop: float | None = None

    def __post_init__(self) -> None:
        for name in ("rtol", "max_mean_rel"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise VerificationError(f"{name} must be a finite number ≥ 0, got {value}")
        for name in ("min_top1_agreement", "max_top1_drop"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise VerificationError(f"{name} is a fraction from 0 to 1, got {value}")


class ParityAccumulator:
    """Running parity figures, fed one chunk of images at a time.

    Memory holds a few sums per batch size and one number per top-1 disagreement, never the
    logits, so any number of images can stream through. Not thread-safe.

    Args:
        reference / candidate: how the report names the two runtimes.
        batch_sizes: the sizes the candidate runs at; every chunk brings its logits at each.
    """

    def __init__(self, *, reference: str, candidate: str, batch_sizes: Sequence[int]) -> None:
        if not batch_sizes or any(b < 1 for b in batch_sizes):
            raise VerificationError(f"batch sizes must be positive, got {tuple(batch_sizes)}")
        self.reference, self.candidate = reference, candidate
        self.batch_sizes = tuple(dict.fromkeys(batch_sizes))
        self._images = 0
        self._reference_max_abs = 0.0
        self._reference_abs_sum = 0.0
        self._reference_correct = 0
        self._labelled: bool | None = None
        self._max_abs = dict.fromkeys(self.batch_sizes, 0.0)
        self._abs_error_sum = dict.fromkeys(self.batch_sizes, 0.0)
        self._agreeing = dict.fromkeys(self.batch_sizes, 0)
        self._correct = dict.fromkeys(self.batch_sizes, 0)
        self._margins: dict[int, list[float]] = {b: [] for b in self.batch_sizes}

    def add(
        self,
        reference_logits: np.ndarray,
        candidate_logits: Mapping[int, np.ndarray],
        labels: np.ndarray | None = None,
    ) -> None:
        """Add one chunk: the reference's (N, classes) logits, the candidate's at every batch
        size, and optionally one class index per image (in every chunk or in none).

        Raises:
            VerificationError: a missing batch size, logits of different shapes, or labels that
                do not match the images.
        """
        expected = np.asarray(reference_logits, dtype=np.float64)
        if expected.ndim != 2:
            raise VerificationError(f"{self.reference} returned logits of shape {expected.shape}, not (N, classes)")
        if labels is not None and np.shape(labels) != (len(expected),):
            raise VerificationError(f"{len(expected)} images but labels of shape {np.shape(labels)}")
        if self._labelled is not None and self._labelled != (labels is not None):
            raise VerificationError("labels must come with every chunk of images or with none")
        if set(candidate_logits) != set(self.batch_sizes):
            raise VerificationError(
                f"expected {self.candidate}'s logits at batch sizes {self.batch_sizes}, got {tuple(candidate_logits)}"
            )
        actuals = {b: np.asarray(candidate_logits[b], dtype=np.float64) for b in self.batch_sizes}
        for batch_size, actual in actuals.items():
            if actual.shape != expected.shape:
                raise VerificationError(
                    f"{self.candidate} returned logits of shape {actual.shape} at batch "
                    f"{batch_size}, {self.reference} {expected.shape}"
                )
        # Everything checked: only now does the chunk count.
        self._labelled = labels is not None
        if len(expected) == 0:
            return
        reference_top1 = expected.argmax(1)
        rows = np.arange(len(expected))
        self._images += len(expected)
        self._reference_max_abs = max(self._reference_max_abs, float(np.abs(expected).max()))
        self._reference_abs_sum += float(np.abs(expected).sum())
        if labels is not None:
            self._reference_correct += int((reference_top1 == labels).sum())
        for batch_size, actual in actuals.items():
            difference = np.abs(actual - expected)
            self._max_abs[batch_size] = max(self._max_abs[batch_size], float(difference.max()))
            self._abs_error_sum[batch_size] += float(difference.sum())
            candidate_top1 = actual.argmax(1)
            agrees = candidate_top1 == reference_top1
            self._agreeing[batch_size] += int(agrees.sum())
            margins = expected[rows, reference_top1] - expected[rows, candidate_top1]
            self._margins[batch_size].extend(margins[~agrees].tolist())
            if labels is not None:
                self._correct[batch_size] += int((candidate_top1 == labels).sum())

    def result(self) -> ParityResult:
        """The figures over every image added so far.

        Raises:
            VerificationError: no image was added.
        """
        if self._images == 0:
            raise VerificationError("parity needs at least one image")
        count = self._images
        # All-zero reference logits leave no scale; the smallest float keeps ratios finite.
        scale = max(self._reference_max_abs, np.finfo(np.float32).tiny)
        # mean |difference| / mean |reference| over the same logits is a ratio of their sums.
        reference_sum = max(self._reference_abs_sum, np.finfo(np.float32).tiny)
        per_batch = tuple(
            BatchParity(
                batch_size=b,
                max_abs=self._max_abs[b],
                max_abs_relative=self._max_abs[b] / scale,
                mean_rel=self._abs_error_sum[b] / reference_sum,
                top1_agreement=self._agreeing[b] / count,
                disagreement_margins=tuple(sorted(m / scale for m in self._margins[b])),
                top1_accuracy=self._correct[b] / count if self._labelled else None,
            )
            for b in self.batch_sizes
        )
        return ParityResult(
            reference=self.reference,
            candidate=self.candidate,
            n_images=count,
            reference_max_abs=self._reference_max_abs,
            max_abs=max(p.max_abs for p in per_batch),
            max_abs_relative=max(p.max_abs_relative for p in per_batch),
            mean_rel=max(p.mean_rel for p in per_batch),
            top1_agreement=min(p.top1_agreement for p in per_batch),
            per_batch=per_batch,
            reference_top1=self._reference_correct / count if self._labelled else None,
            candidate_top1=min(p.top1_accuracy for p in per_batch) if self._labelled else None,
        )


def check_parity(result: ParityResult, tolerance: Tolerance) -> None:
    """Raise VerificationError unless every batch size meets every threshold of ``tolerance``.

    Raises:
        VerificationError: one line naming the first threshold missed, the batch size and the
            figure measured.
    """
    if tolerance.max_top1_drop is not None and result.reference_top1 is None:
        raise VerificationError("a top-1 accuracy threshold needs a comparison made with labels")
    for parity in result.per_batch:
        at = f"at batch {parity.batch_size}"
        if tolerance.rtol is not None and parity.max_abs > tolerance.rtol * result.reference_max_abs:
            raise VerificationError(
                f"{result.candidate} differs from {result.reference} by up to {parity.max_abs:.3g} {at}, "
                f"{parity.max_abs_relative:.3g} of the largest logit ({result.reference_max_abs:.3g}); "
                f"tolerance rtol {tolerance.rtol:g}"
            )
        if tolerance.max_mean_rel is not None and parity.mean_rel > tolerance.max_mean_rel:
            raise VerificationError(
                f"{result.candidate}'s mean relative error against {result.reference} is "
                f"{parity.mean_rel:.3g} {at} (tolerance {tolerance.max_mean_rel:g})"
            )
        if tolerance.min_top1_agreement is not None:
            ties = parity.ties(tolerance.rtol)
            disagreeing = len(parity.disagreement_margins) - ties
            agreement = 1.0 - disagreeing / result.n_images
            if agreement < tolerance.min_top1_agreement:
                counted = f"; {ties} near-ties counted as agreeing" if ties else ""
                raise VerificationError(
                    f"{result.candidate} agrees with {result.reference} on the top-1 class of only "
                    f"{agreement:.2%} of {result.n_images} images {at} "
                    f"(needed {tolerance.min_top1_agreement:.2%}{counted})"
                )
        if tolerance.max_top1_drop is not None and parity.top1_accuracy is not None:
            drop = result.reference_top1 - parity.top1_accuracy
            if drop > tolerance.max_top1_drop:
                raise VerificationError(
                    f"{result.candidate} loses {drop * 100:.2f} points of top-1 accuracy against "
                    f"{result.reference} {at} ({parity.top1_accuracy:.2%} vs "
                    f"{result.reference_top1:.2%}; allowed {tolerance.max_top1_drop * 100:.2f})"
                )
