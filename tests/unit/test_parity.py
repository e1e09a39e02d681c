"""The arithmetic of agreement: figures checked against numpy computed independently, streaming
against one pass, and a verdict that means the same at every logit scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_serve.errors import VerificationError
from resnet_serve.parity import DEFAULT_RTOL, ParityAccumulator, ParityResult, Tolerance, check_parity


def logits(images: int, classes: int = 10, *, seed: int = 0, scale: float = 5.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((images, classes)) * scale).astype(np.float32)


def compare(reference: np.ndarray, candidates: dict[int, np.ndarray], labels: np.ndarray | None = None) -> ParityResult:
    accumulator = ParityAccumulator(reference="ref", candidate="cand", batch_sizes=tuple(candidates))
    accumulator.add(reference, candidates, labels)
    return accumulator.result()


def test_figures_match_numpy() -> None:
    reference = logits(40)
    noise = np.random.default_rng(1).standard_normal(reference.shape).astype(np.float32)
    candidate = reference + 1e-3 * noise
    labels = np.random.default_rng(2).integers(0, 10, 40)

    result = compare(reference, {1: candidate, 8: reference}, labels)

    difference = np.abs(candidate.astype(np.float64) - reference)
    largest = np.abs(reference).max()
    first, second = result.per_batch
    assert (result.n_images, result.reference_max_abs) == (40, pytest.approx(largest))
    assert first.max_abs == pytest.approx(difference.max())
    assert first.max_abs_relative == pytest.approx(difference.max() / largest)
    assert first.mean_rel == pytest.approx(difference.mean() / np.abs(reference).mean())
    assert first.top1_agreement == (candidate.argmax(1) == reference.argmax(1)).mean()
    assert first.top1_accuracy == (candidate.argmax(1) == labels).mean()
    assert (second.max_abs, second.mean_rel, second.top1_agreement) == (0.0, 0.0, 1.0)
    assert result.reference_top1 == (reference.argmax(1) == labels).mean()
    assert (result.max_abs, result.max_abs_relative) == (first.max_abs, first.max_abs_relative)
    assert result.candidate_top1 == min(first.top1_accuracy, second.top1_accuracy)
    assert json.loads(json.dumps(result.to_dict()))["per_batch"][1]["batch_size"] == 8


def test_streaming_in_chunks_equals_one_pass() -> None:
    reference = logits(100, seed=3)
    candidate = reference + np.random.default_rng(4).normal(0, 0.3, reference.shape).astype(np.float32)
    labels = np.random.default_rng(5).integers(0, 10, 100)
    whole = compare(reference, {4: candidate}, labels)

    accumulator = ParityAccumulator(reference="ref", candidate="cand", batch_sizes=(4,))
    for start in range(0, 100, 32):
        chunk = slice(start, start + 32)
        accumulator.add(reference[chunk], {4: candidate[chunk]}, labels[chunk])
    streamed = accumulator.result()

    assert streamed.per_batch[0].disagreement_margins == whole.per_batch[0].disagreement_margins
    assert len(whole.per_batch[0].disagreement_margins) > 0
    for name in ("n_images", "reference_max_abs", "max_abs", "top1_agreement", "reference_top1", "candidate_top1"):
        assert getattr(streamed, name) == getattr(whole, name), name
    assert streamed.mean_rel == pytest.approx(whole.mean_rel, rel=1e-12)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_the_verdict_is_the_same_at_every_logit_scale(scale: float) -> None:
    reference = logits(64, seed=6, scale=scale)
    largest = np.abs(reference).max()
    # Float32 rounding grows with the logits: the same relative error at every scale.
    for relative_error, passes in ((0.5 * DEFAULT_RTOL, True), (2 * DEFAULT_RTOL, False)):
        candidate = reference.copy()
        candidate[3, 2] += relative_error * largest
        result = compare(reference, {8: candidate})
        assert result.max_abs_relative == pytest.approx(relative_error, rel=1e-3)
        if passes:
            check_parity(result, Tolerance())
        else:
            with pytest.raises(VerificationError, match=r"cand differs from ref by up to .* at batch 8, .* of the largest logit .*; tolerance rtol 0.0001"):
                check_parity(result, Tolerance())


def test_a_flip_between_near_tied_classes_is_a_tie_not_a_disagreement() -> None:
    reference = logits(20, seed=7, scale=20.0)
    largest = np.abs(reference).max()
    top, runner_up = np.argsort(reference[5])[::-1][:2]
    # Image 5's two best classes a hair apart, the candidate choosing the other within rtol.
    reference[5, runner_up] = reference[5, top] - 0.2 * DEFAULT_RTOL * largest
    candidate = reference.copy()
    candidate[5, runner_up] += 0.4 * DEFAULT_RTOL * largest

    result = compare(reference, {1: candidate})

    (parity,) = result.per_batch
    assert parity.top1_agreement == 0.95
    assert parity.disagreement_margins == (pytest.approx(0.2 * DEFAULT_RTOL, rel=1e-3),)
    assert (parity.ties(DEFAULT_RTOL), parity.ties(0.1 * DEFAULT_RTOL), parity.ties(None)) == (1, 0, 0)
    check_parity(result, Tolerance())
    with pytest.raises(VerificationError, match=r"agrees with ref on the top-1 class of only 95.00% of 20 images at batch 1 \(needed 100.00%\)"):
        check_parity(result, Tolerance(rtol=None))


def test_a_flip_beyond_a_near_tie_fails_although_every_logit_is_within_rtol() -> None:
    reference = logits(20, seed=8, scale=20.0)
    largest = np.abs(reference).max()
    top, runner_up = np.argsort(reference[2])[::-1][:2]
    reference[2, runner_up] = reference[2, top] - 1.5 * DEFAULT_RTOL * largest
    candidate = reference.copy()
    candidate[2, top] -= 0.9 * DEFAULT_RTOL * largest
    candidate[2, runner_up] += 0.9 * DEFAULT_RTOL * largest

    result = compare(reference, {1: candidate})

    assert result.max_abs_relative == pytest.approx(0.9 * DEFAULT_RTOL, rel=1e-3)
    assert result.per_batch[0].ties(DEFAULT_RTOL) == 0
    with pytest.raises(VerificationError, match=r"on the top-1 class of only 95.00% of 20 images at batch 1"):
        check_parity(result, Tolerance())
    # A lower precision is judged by its agreement alone.
    check_parity(result, Tolerance(rtol=None, min_top1_agreement=0.95))


def test_mean_error_and_accuracy_thresholds() -> None:
    reference = logits(50, seed=9)
    labels = reference.argmax(1)
    candidate = reference + np.random.default_rng(10).normal(0, 2.0, reference.shape).astype(np.float32)
    result = compare(reference, {1: candidate, 16: candidate}, labels)
    drop = 1.0 - result.candidate_top1
    assert result.reference_top1 == 1.0 and drop > 0.05

    check_parity(result, Tolerance(rtol=None, min_top1_agreement=None, max_top1_drop=drop))
    with pytest.raises(VerificationError, match=r"loses .* points of top-1 accuracy against ref at batch 1"):
        check_parity(result, Tolerance(rtol=None, min_top1_agreement=None, max_top1_drop=drop / 2))
    with pytest.raises(VerificationError, match=r"cand's mean relative error against ref is .* at batch 1 \(tolerance 0.01\)"):
        check_parity(result, Tolerance(rtol=None, min_top1_agreement=None, max_mean_rel=0.01))
    unlabelled = compare(reference, {1: candidate})
    with pytest.raises(VerificationError, match="needs a comparison made with labels"):
        check_parity(unlabelled, Tolerance(max_top1_drop=0.01))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rtol": -1e-4}, "rtol must be a finite number"),
        ({"rtol": float("nan")}, "rtol must be a finite number"),
        ({"min_top1_agreement": 99.0}, "min_top1_agreement is a fraction from 0 to 1"),
        ({"max_top1_drop": -0.1}, "max_top1_drop is a fraction"),
    ],
)
def test_bad_tolerances_are_refused(options: dict, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        Tolerance(**options)


def test_inputs_that_cannot_be_compared_are_refused() -> None:
    reference = logits(4)
    with pytest.raises(VerificationError, match="batch sizes must be positive"):
        ParityAccumulator(reference="ref", candidate="cand", batch_sizes=(0,))
    accumulator = ParityAccumulator(reference="ref", candidate="cand", batch_sizes=(1, 2))
    with pytest.raises(VerificationError, match="parity needs at least one image"):
        accumulator.result()
    with pytest.raises(VerificationError, match=r"cand returned logits of shape \(4, 7\) at batch 2, ref \(4, 10\)"):
        accumulator.add(reference, {1: reference, 2: reference[:, :7]})
    with pytest.raises(VerificationError, match=r"expected cand's logits at batch sizes \(1, 2\)"):
        accumulator.add(reference, {1: reference})
    with pytest.raises(VerificationError, match="4 images but labels of shape"):
        accumulator.add(reference, {1: reference, 2: reference}, np.zeros(3, np.int64))
    accumulator.add(reference, {1: reference, 2: reference}, np.zeros(4, np.int64))
    with pytest.raises(VerificationError, match="labels must come with every chunk"):
        accumulator.add(reference, {1: reference, 2: reference})
