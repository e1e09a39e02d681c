"""The derived models of one checkpoint, each made on first use: the BatchNorm-folded model, its
FP32 ONNX export, and the INT8 and FP16 copies of that file.

``export`` serves these files and ``verify`` runs them through the runtimes of
``resnet_serve.runtimes`` (``Artifacts`` is the ``ModelFiles`` they are built from), so both
make them by the same code from the same options: what verify measures is what export serves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
from torch import nn

from resnet_serve.checkpoints import Checkpoint
from resnet_serve.errors import ExportError
from resnet_serve.export import CalibrationMethod
from resnet_serve.export.fp16 import Fp16ConversionResult, convert_fp16
from resnet_serve.export.onnx import OnnxExportResult, OnnxOptions, export_onnx
from resnet_serve.export.quantize import QuantizationResult, quantize_int8
from resnet_serve.fold import FoldResult, fold_batchnorm
from resnet_serve.parity import Tolerance

__all__ = ["Artifacts"]


class Artifacts:
    """Folded model, FP32, INT8 and FP16 ONNX of one checkpoint, made lazily in ``workdir``.

    Each is made once, the first time it is asked for, and reused by everything asked later:
    fold → ``model-fp32.onnx`` → ``model-int8.onnx`` or ``model-fp16.onnx``. Not thread-safe.

    Args:
        checkpoint: the loaded checkpoint.
        workdir: the folder the files go to (kept; the caller decides how long).
        onnx: how the folded model is exported.
        tolerance: what the simplified graph must meet against the unsimplified one.
        simplify_images: the images that check simplification (see ``export_onnx``).
        calibration: gives the prepared calibration images, called only when INT8 is made.
        calibration_method: minmax, entropy or percentile.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        workdir: Path,
        onnx: OnnxOptions = OnnxOptions(),
        tolerance: Tolerance = Tolerance(),
        simplify_images: np.ndarray | None = None,
        calibration: Callable[[], np.ndarray] | None = None,
        calibration_method: CalibrationMethod = "minmax",
    ) -> None:
        self.checkpoint = checkpoint
        self.workdir = workdir
        self.onnx_options = onnx
        self.tolerance = tolerance
        self.simplify_images = simplify_images
        self.calibration = calibration
        self.calibration_method = calibration_method

    @property
    def model(self) -> nn.Module:
        return self.checkpoint.model

    @cached_property
    def folding(self) -> FoldResult:
        return fold_batchnorm(self.checkpoint.model)

    @property
    def folded_model(self) -> nn.Module:
        return self.folding.model

    @cached_property
    def onnx_export(self) -> OnnxExportResult:
        meta = self.checkpoint.meta
        return export_onnx(
            self.folded_model,
            self.workdir / "model-fp32.onnx",
            input_shape=meta.input_shape,
            options=self.onnx_options,
            simplify_images=self.simplify_images,
            tolerance=self.tolerance,
            metadata=meta.onnx_metadata(),
        )

    @property
    def onnx_fp32(self) -> Path:
        return self.onnx_export.path

    @cached_property
    def int8(self) -> QuantizationResult:
        """Raises ExportError without a calibration source."""
        if self.calibration is None:
            raise ExportError("the INT8 model needs calibration images, and none were given")
        return quantize_int8(
            self.onnx_fp32,
            self.workdir / "model-int8.onnx",
            calibration_images=self.calibration(),
            method=self.calibration_method,
        )

    @property
    def onnx_int8(self) -> Path:
        return self.int8.path

    @cached_property
    def fp16(self) -> Fp16ConversionResult:
        return convert_fp16(self.onnx_fp32, self.workdir / "model-fp16.onnx")

    @property
    def onnx_fp16(self) -> Path:
        return self.fp16.path

    @property
    def notes(self) -> dict[str, str]:
        """How each file made so far was made, where that is not obvious, by file name."""
        notes = {}
        # A cached_property keeps its value in the instance's __dict__ once computed.
        if "int8" in self.__dict__:
            result = self.int8
            notes[result.path.name] = (
                f"static QDQ, per-channel weights, {result.method} calibration on "
                f"{result.calibration_images} training images; kept in FP32: "
                f"{', '.join(result.kept_fp32) or 'nothing'}"
            )
        return notes
