"""Parity of two runtimes of one checkpoint on real test images: the ``verify`` command.

This module only orchestrates: the runtimes come from the registry in
``resnet_serve.runtimes``, the files they run from ``resnet_serve.artifacts`` (made as
``export`` makes them), the images from ``resnet_serve.selection`` (chosen as ``export``
chooses them), and the arithmetic from ``resnet_serve.parity``. Images stream through in
chunks, so a large test folder is never held as float32 all at once.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from resnet_serve.artifacts import Artifacts
from resnet_serve.checkpoints import load_checkpoint
from resnet_serve.errors import VerificationError, first_line
from resnet_serve.export import CalibrationMethod
from resnet_serve.export.onnx import OnnxOptions
from resnet_serve.files import asdict_with_paths
from resnet_serve.parity import ParityAccumulator, ParityResult
from resnet_serve.runtimes import OpenVinoRuntime, add_to_parity, get_runtime_kind
from resnet_serve.selection import ImageSelection, calibration_images, verification_chunks

__all__ = ["VerifyReport", "verify_runtimes"]

# Images prepared at once: bounds memory (256 ImageNet-sized inputs are 154 MB of float32)
# while keeping the runtimes' batches full.
_CHUNK_IMAGES = 256


@dataclass(frozen=True)
class VerifyReport:
    """Two runtimes of one checkpoint compared on labelled real test images.

    ``notes`` says how a file was made or what a runtime really computes in (INT8
    calibration, an OpenVINO precision the CPU cannot honour). ``artifacts`` is the folder the
    models' files were kept in, if they were.
    """

    checkpoint: Path
    architecture: str
    parity: ParityResult
    batch_sizes: tuple[int, ...]
    selection: ImageSelection
    notes: dict[str, str] = field(default_factory=dict)
    artifacts: Path | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict_with_paths(self)


def verify_runtimes(
    *,
    checkpoint: Path,
    reference: str,
    candidate: str,
    selection: ImageSelection = ImageSelection(),
    calibration_method: CalibrationMethod = "minmax",
    onnx: OnnxOptions = OnnxOptions(),
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    artifacts_dir: Path | None = None,
) -> VerifyReport:
    """Build two runtime kinds (``resnet_serve.runtimes.RUNTIMES``) from a checkpoint and compare
    them on its selected test images, labels included.

    The files the kinds run are made as ``export`` makes them from the same ``selection``,
    ``calibration_method`` and ``onnx`` options, so an INT8 kind runs the very file that
    ``export --precision int8`` would serve. They go to ``artifacts_dir`` when given (kept), or
    else to a temporary folder removed afterwards. Thresholds are judged separately, by
    ``resnet_serve.parity.check_parity``.

    Raises:
        VerificationError: an unknown kind; the errors of the stages it runs.
    """
    began = time.perf_counter()
    if threads is not None and threads < 1:
        raise VerificationError(f"threads must be ≥ 1, got {threads}")
    kinds = get_runtime_kind(reference), get_runtime_kind(candidate)
    loaded = load_checkpoint(checkpoint)
    preprocessing = loaded.meta.preprocessing
    accumulator = ParityAccumulator(reference=reference, candidate=candidate, batch_sizes=batch_sizes)
    chunk_size = max(accumulator.batch_sizes) * max(1, _CHUNK_IMAGES // max(accumulator.batch_sizes))
    with _workdir(artifacts_dir) as workdir:
        artifacts = Artifacts(
            loaded,
            workdir=workdir,
            onnx=onnx,
            calibration=lambda: calibration_images(selection, preprocessing),
            calibration_method=calibration_method,
        )
        runtimes = [kind.build(artifacts, threads=threads) for kind in kinds]
        for chunk in verification_chunks(selection, preprocessing, chunk_size=chunk_size):
            add_to_parity(accumulator, *runtimes, chunk.images, labels=chunk.labels)
        notes = artifacts.notes | {
            runtime.name: runtime.note
            for runtime in runtimes
            if isinstance(runtime, OpenVinoRuntime) and runtime.note is not None
        }
    return VerifyReport(
        checkpoint=checkpoint,
        architecture=loaded.meta.architecture,
        parity=accumulator.result(),
        batch_sizes=accumulator.batch_sizes,
        selection=selection,
        notes=notes,
        artifacts=artifacts_dir,
        seconds=time.perf_counter() - began,
    )


@contextlib.contextmanager
def _workdir(kept: Path | None) -> Iterator[Path]:
    if kept is not None:
        try:
            kept.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VerificationError(f"cannot keep the models' files in {kept}: {first_line(error)}") from None
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix="resnet-serve-verify-") as scratch:
        yield Path(scratch)
