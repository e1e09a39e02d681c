"""Numerical parity between two runtimes on real images.

A runtime is anything with a ``name`` and a ``run(batch) -> logits`` over float32 NCHW numpy
arrays; PyTorch and onnxruntime are here, other back ends (OpenVINO, INT8, TensorRT) only need
to offer the same two members. ``compare_runtimes`` measures, ``check_parity`` judges.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from resnet_serve.errors import VerificationError

__all__ = [
    "BatchParity",
    "OnnxRuntime",
    "ParityResult",
    "Runtime",
    "TorchRuntime",
    "check_parity",
    "compare_runtimes",
    "run_batched",
    "verify_onnx_export",
]


@runtime_checkable
class Runtime(Protocol):
    """Runs a classifier: float32 NCHW images in, (N, classes) float32 logits out."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class TorchRuntime:
    """A PyTorch module as a Runtime. The module is switched to eval mode."""

    def __init__(self, model: nn.Module, *, name: str = "pytorch") -> None:
        self.name = name
        self.model = model.eval()
        parameter = next(model.parameters(), None)
        self._device = parameter.device if parameter is not None else torch.device("cpu")
        self._dtype = parameter.dtype if parameter is not None else torch.float32

    def run(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(_as_batch(batch)).to(device=self._device, dtype=self._dtype)
        with torch.inference_mode():
            return self.model(inputs).float().cpu().numpy()


class OnnxRuntime:
    """An ONNX file run by onnxruntime's CPU provider.

    Args:
        path: the ONNX file.
        threads: intra-op threads; None lets onnxruntime choose.
        name: how reports call this runtime.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, threads: int | None = None, name: str = "onnxruntime"
    ) -> None:
        # Imported here so that PyTorch-only use of this module does not load onnxruntime.
        import onnxruntime

        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise VerificationError(f"ONNX model {self.path} does not exist")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind types, one per failure kind
            raise VerificationError(
                f"onnxruntime cannot load {self.path}: {_first_line(exc)}"
            ) from exc
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            (logits,) = self.session.run([self.output_name], {self.input_name: _as_batch(batch)})
        except Exception as exc:
            raise VerificationError(
                f"onnxruntime failed on {self.path} with a batch of shape {batch.shape}: "
                f"{_first_line(exc)}"
            ) from exc
        return logits


@dataclass(frozen=True)
class BatchParity:
    """Agreement of the candidate with the reference when run at one batch size.

    ``mean_rel`` is mean |candidate − reference| / mean |reference|: a relative error that
    stays finite when single logits are near zero.
    """

    batch_size: int
    max_abs: float
    mean_rel: float
    top1_agreement: float


@dataclass(frozen=True)
class ParityResult:
    """Parity over ``n_images``; the top-level figures are the worst over all batch sizes."""

    reference: str
    candidate: str
    n_images: int
    max_abs: float
    mean_rel: float
    top1_agreement: float
    per_batch: tuple[BatchParity, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def compare_runtimes(
    reference: Runtime,
    candidate: Runtime,
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 8),
) -> ParityResult:
    """Run ``images`` through both runtimes and measure how far the candidate's logits stray.

    The reference runs once, in batches of the largest size; the candidate runs all images at
    every size in ``batch_sizes`` (the last batch may be smaller), since batch-dependent
    kernels are a common source of divergence.

    Raises:
        VerificationError: no images, a bad batch size, or outputs of different shapes.
    """
    images = _as_batch(images)
    if len(images) == 0:
        raise VerificationError("parity needs at least one image")
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
    )


def check_parity(
    result: ParityResult, *, atol: float, min_top1_agreement: float = 1.0
) -> None:
    """Raise VerificationError unless every batch size is within ``atol`` and top-1 agrees enough."""
    for parity in result.per_batch:
        if parity.max_abs > atol:
            raise VerificationError(
                f"{result.candidate} differs from {result.reference} by up to "
                f"{parity.max_abs:.3g} at batch {parity.batch_size} (tolerance {atol:g})"
            )
        if parity.top1_agreement < min_top1_agreement:
            raise VerificationError(
                f"{result.candidate} agrees with {result.reference} on the top-1 class of only "
                f"{parity.top1_agreement:.2%} of {result.n_images} images at batch "
                f"{parity.batch_size} (needed {min_top1_agreement:.2%})"
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


def run_batched(runtime: Runtime, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of all ``images``, run ``batch_size`` at a time (the last batch may be smaller)."""
    outputs = [runtime.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)


def _as_batch(batch: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim != 4:
        raise VerificationError(f"expected an NCHW batch of images, got shape {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
