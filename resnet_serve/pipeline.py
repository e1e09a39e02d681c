"""Stages chained for one checkpoint: fold → ONNX → verify → (TensorRT) → Triton repository entry."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnx

from resnet_serve.checkpoints import Checkpoint, load_checkpoint
from resnet_serve.datasets import load_dataset
from resnet_serve.errors import ExportError, ResnetServeError, VerificationError, first_line
from resnet_serve.export.fp16 import convert_fp16
from resnet_serve.export.onnx import Exporter, OnnxExportResult, export_onnx, load_onnx_safely
from resnet_serve.export.quantize import CALIBRATION_METHODS, CalibrationMethodName, quantize_int8
from resnet_serve.export.tensorrt import EngineOptions, build_engine, require_tensorrt
from resnet_serve.files import replacing_atomically
from resnet_serve.fold import FOLD_TOLERANCE, FoldResult, fold_batchnorm, fold_onnx_batchnorm
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.runtimes import OnnxRuntime
from resnet_serve.triton.config import TENSORRT_PLAN, get_serving_target
from resnet_serve.triton.repository import write_model_entry
from resnet_serve.verify import ParityResult, TorchRuntime, check_parity, compare_runtimes, verify_onnx_export

# onnxruntime's kernels differ from PyTorch's in summation order; 1e-4 on logits is far below
# any change of the top-1 class.
ONNX_TOLERANCE = 1e-4
# An INT8 or FP16 file changes logits by design; what it must keep is the top-1 class.
MIN_LOW_PRECISION_AGREEMENT = 0.99

OnnxPrecision = Literal["fp32", "fp16", "int8"]
ONNX_PRECISIONS: tuple[str, ...] = get_args(OnnxPrecision)


@dataclass(frozen=True)
class ExportReport:
    checkpoint: str
    architecture: str
    name: str
    target: str
    entry: str
    model_file: str
    input_shape: tuple[int, int, int]
    batchnorms_folded: int
    params_before: int
    params_after: int
    batchnorm_nodes: int
    fold_max_abs: float
    onnx_max_abs: float
    onnx_top1_agreement: float
    verify_images: int
    verify_batch_sizes: list[int]
    seconds: float
    precision: str = "fp32"
    precision_parity: dict | None = None
    engine: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def default_model_name(checkpoint: Path) -> str:
    """A Triton model name from a checkpoint's file name (resnet20-fashion.safetensors → resnet20-fashion)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", checkpoint.name.split(".")[0]) or "model"


def verification_images(
    checkpoint: Checkpoint, *, data_dir: Path | None, count: int, split: str = "test"
) -> np.ndarray:
    """The first ``count`` real images of a split of ``data_dir``, prepared as the model expects."""
    dataset = load_dataset(data_dir, split=split)
    return dataset.read(range(min(count, len(dataset))), preprocessing=checkpoint.meta.preprocessing)


@dataclass(frozen=True)
class VerifiedOnnx:
    """A checkpoint folded and exported, each step checked on real images."""

    folded: FoldResult
    fold_parity: ParityResult
    exported: OnnxExportResult
    onnx_parity: ParityResult


def fold_export_verify(
    loaded: Checkpoint,
    path: Path,
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int],
    fold_atol: float = FOLD_TOLERANCE,
    onnx_atol: float = ONNX_TOLERANCE,
    **export_options: Any,
) -> VerifiedOnnx:
    """Fold the checkpoint's BatchNorms, export the folded model to ``path`` and verify both:
    folded vs original within ``fold_atol``, onnxruntime vs the original within ``onnx_atol``
    with identical top-1 at every batch size, and no BatchNormalization node left in the graph."""
    folded = fold_batchnorm(loaded.model)
    fold_parity = compare_runtimes(
        TorchRuntime(loaded.model), TorchRuntime(folded.model, name="pytorch-folded"), images,
        batch_sizes=batch_sizes[-1:],
    )
    check_parity(fold_parity, atol=fold_atol)
    exported = export_onnx(
        folded.model, path, input_shape=loaded.meta.input_shape,
        metadata=loaded.meta.onnx_metadata(), **export_options,
    )
    if exported.batchnorm_nodes:
        raise VerificationError(f"the folded ONNX still has {exported.batchnorm_nodes} BatchNormalization nodes")
    # Against the original, unfolded model: the whole chain is what must hold.
    onnx_parity = verify_onnx_export(loaded.model, path, images, atol=onnx_atol, batch_sizes=batch_sizes)
    return VerifiedOnnx(folded, fold_parity, exported, onnx_parity)


def export_to_repository(
    *,
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    target: str = "python-onnxruntime",
    max_batch_size: int = 64,
    instances: int = 1,
    opset: int | None = None,
    exporter: Exporter = "legacy",
    dynamic_hw: bool = False,
    simplify: bool = False,
    data_dir: Path | None = None,
    verify_images: int = 256,
    verify_batch_size: int = 64,
    fold_atol: float = FOLD_TOLERANCE,
    onnx_atol: float = ONNX_TOLERANCE,
    precision: OnnxPrecision = "fp32",
    calibration_images: int = 512,
    calibration_method: CalibrationMethodName = "minmax",
    min_agreement: float = MIN_LOW_PRECISION_AGREEMENT,
    engine: EngineOptions | None = None,
    reporter: Reporter | None = None,
) -> ExportReport:
    """Fold, export and verify a checkpoint, then write its Triton repository entry.

    Nothing is written to the repository unless the folded model matches the original within
    ``fold_atol`` (1e-5) and onnxruntime matches PyTorch within ``onnx_atol`` (1e-4) with
    identical top-1, at batch 1 and at ``verify_batch_size``, on real test images. Float32
    rounding grows with depth and with the logits' scale, so a very deep net with large logits
    may need looser tolerances; its report shows what was measured.

    ``precision`` int8 or fp16 serves a lower-precision copy of the verified FP32 ONNX: INT8
    static QDQ calibrated on ``calibration_images`` real training images, or FP16 weights
    with FP32 inputs and outputs. It is written only if its top-1 agrees with the FP32 file's
    on at least ``min_agreement`` of the test images at every batch size.

    With ``engine``, the verified ONNX is built into a TensorRT engine (INT8 calibrated on
    real training images) that the entry serves through the ``tensorrt`` target instead.
    """
    reporter = reporter or SilentReporter()
    began = time.perf_counter()
    if precision not in ONNX_PRECISIONS:
        raise ExportError(f"unknown ONNX precision {precision!r}; choose one of {', '.join(ONNX_PRECISIONS)}")
    if precision == "int8" and calibration_method not in CALIBRATION_METHODS:
        raise ExportError(
            f"unknown calibration method {calibration_method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"the minimum top-1 agreement is a fraction from 0 to 1, got {min_agreement}")
    if engine is not None:
        # Before any work: without TensorRT and a GPU the whole export would be wasted.
        require_tensorrt()
        serving_target = TENSORRT_PLAN
    else:
        serving_target = get_serving_target(target)
        if serving_target is TENSORRT_PLAN:
            raise ExportError(
                f"the {TENSORRT_PLAN.name} target serves an engine: export with the tensorrt format"
            )
    loaded = load_checkpoint(checkpoint)
    meta = loaded.meta
    name = name or default_model_name(checkpoint)
    images = verification_images(loaded, data_dir=data_dir, count=verify_images)
    batch_sizes = [1, min(verify_batch_size, len(images))]

    with tempfile.TemporaryDirectory(prefix="resnet-serve-export-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        reporter.message(
            f"folding BatchNorm of {meta.architecture}, exporting ONNX ({exporter} exporter) and "
            f"verifying both on {len(images)} test images"
        )
        verified = fold_export_verify(
            loaded, onnx_path, images, batch_sizes=batch_sizes, opset=opset, exporter=exporter,
            dynamic_hw=dynamic_hw, simplify=simplify, simplify_images=images,
            fold_atol=fold_atol, onnx_atol=onnx_atol,
        )
        model_file, built, precision_parity = onnx_path, None, None
        if engine is None and precision != "fp32":
            reporter.message(f"making the {precision} ONNX and checking it against FP32 on {len(images)} test images")
            model_file, precision_parity = _lower_precision_onnx(
                onnx_path, precision=precision, batch_sizes=batch_sizes, images=images,
                calibration_images=verification_images(
                    loaded, data_dir=data_dir, count=calibration_images, split="train"
                ) if precision == "int8" else None,
                calibration_method=calibration_method, min_agreement=min_agreement,
            )
        if engine is not None:
            reporter.message(f"building a {engine.precision} TensorRT engine")
            built = build_engine(
                onnx_path,
                Path(scratch) / TENSORRT_PLAN.model_filename,
                precision=engine.precision,
                profile=engine.profile(
                    input_shape=meta.preprocessing.input_shape, max_batch_size=max_batch_size
                ),
                workspace_bytes=engine.workspace_bytes,
                timing_cache_path=engine.timing_cache_path,
                calibration_images=verification_images(
                    loaded, data_dir=data_dir, count=engine.calibration_images, split="train"
                ) if engine.precision == "int8" else None,
                calibration_cache_path=engine.calibration_cache_path,
            )
            model_file = built.plan_path
        entry = write_model_entry(
            repository=repository,
            name=name,
            onnx_path=model_file,
            class_names=meta.class_names,
            preprocessing=meta.preprocessing.to_dict(),
            input_shape=meta.preprocessing.input_shape,
            target=serving_target,
            max_batch_size=max_batch_size,
            instances=instances,
            metadata={
                "architecture": meta.architecture,
                "class_names": json.dumps(meta.class_names),
                "test_accuracy": json.dumps(meta.metrics.get("test_accuracy")),
            },
        )
    return ExportReport(
        checkpoint=str(checkpoint),
        architecture=meta.architecture,
        name=name,
        target=serving_target.name,
        entry=str(entry.path),
        model_file=str(entry.model_path),
        input_shape=meta.preprocessing.input_shape,
        batchnorms_folded=verified.folded.folded,
        params_before=verified.folded.params_before,
        params_after=verified.folded.params_after,
        batchnorm_nodes=verified.exported.batchnorm_nodes,
        fold_max_abs=verified.fold_parity.max_abs,
        onnx_max_abs=verified.onnx_parity.max_abs,
        onnx_top1_agreement=verified.onnx_parity.top1_agreement,
        verify_images=len(images),
        verify_batch_sizes=batch_sizes,
        seconds=time.perf_counter() - began,
        precision=engine.precision if engine is not None else precision,
        precision_parity=precision_parity.to_dict() if precision_parity is not None else None,
        engine=built.to_dict() if built is not None else None,
    )


def _lower_precision_onnx(
    fp32_path: Path,
    *,
    precision: OnnxPrecision,
    batch_sizes: Sequence[int],
    images: np.ndarray,
    calibration_images: np.ndarray | None,
    calibration_method: CalibrationMethodName,
    min_agreement: float,
) -> tuple[Path, ParityResult]:
    """An INT8 or FP16 copy of a verified FP32 ONNX beside it, checked for top-1 agreement."""
    path = fp32_path.with_name(f"model-{precision}.onnx")
    if precision == "int8":
        quantize_int8(fp32_path, path, calibration_images=calibration_images, method=calibration_method)
    else:
        convert_fp16(fp32_path, path)
    parity = compare_runtimes(
        OnnxRuntime(fp32_path, name="onnx-fp32"), OnnxRuntime(path, name=f"onnx-{precision}"),
        images, batch_sizes=batch_sizes,
    )
    check_parity(parity, atol=None, min_top1_agreement=min_agreement)
    return path, parity


# For an ONNX file without preprocessing in its metadata: pixels of 0..1 scaled to about ±2,
# the spread a normalised input has, so the check exercises realistic activations.
DEFAULT_ONNX_PREPROCESSING_MEAN = 0.5
DEFAULT_ONNX_PREPROCESSING_STD = 0.25


@dataclass
class FoldFileReport:
    """What ``fold_file`` (the ``resnet-serve fold`` command) did.

    Attributes:
        source / output: the file read and the folded ONNX written.
        kind: ``checkpoint`` (folded in PyTorch, then exported) or ``onnx`` (graph pass).
        folded: BatchNorm layers folded.
        batchnorm_nodes: BatchNormalization nodes left in the written ONNX.
        unfolded: the BatchNorms that stayed, with why.
        params_before / params_after: PyTorch parameters for a checkpoint; stored ONNX values
            (BatchNorm running statistics included) for an ONNX file.
        max_abs: folded vs unfolded max-abs logit difference on ``images`` real test images.
        onnx_max_abs: for a checkpoint, onnxruntime on the written file vs unfolded PyTorch.
        preprocessing: where the images' preprocessing came from: ``checkpoint``,
            ``metadata`` (the ONNX file's ``preprocessing`` entry) or ``default``.
    """

    source: Path
    output: Path
    kind: Literal["checkpoint", "onnx"]
    folded: int
    batchnorm_nodes: int
    unfolded: dict[str, str]
    params_before: int
    params_after: int
    max_abs: float
    images: int
    preprocessing: Literal["checkpoint", "metadata", "default"]
    onnx_max_abs: float | None = None

    def to_dict(self) -> dict:
        result = asdict(self)
        result.update(source=str(self.source), output=str(self.output))
        return result


def fold_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    data_dir: Path | None = None,
    verify_images: int = 256,
) -> FoldFileReport:
    """Fold the BatchNorms of a checkpoint (``.safetensors``) or an ONNX file into a folded ONNX.

    A checkpoint is folded in PyTorch (FP32 arithmetic in float64), checked against the
    unfolded model, exported with the legacy exporter at opset 17, and the file checked with
    onnxruntime against the unfolded model. An ONNX file goes through ``load_onnx_safely`` and
    the graph pass. Both are measured on the first ``verify_images`` real test images of
    ``data_dir`` (default: Fashion-MNIST), preprocessed as the checkpoint says, as the ONNX
    file's ``preprocessing`` metadata says, or else resized to the graph's input size with
    mean 0.5 and std 0.25 per channel. ``output`` is written only once every check passed.

    Raises:
        ExportError: an unknown file type, an unsafe or malformed ONNX file, or a failed export.
        VerificationError: folded and unfolded differ by more than 1e-5, or the ONNX export
            from PyTorch by more than 1e-4.
    """
    source, destination = Path(source), Path(output)
    if source.suffix == ".onnx":
        proto = load_onnx_safely(source)
        preprocessing, origin = _onnx_preprocessing(proto, shown=source)
        test_set = load_dataset(data_dir, split="test")
        images = test_set.read(range(min(verify_images, len(test_set))), preprocessing=preprocessing)
        report = fold_onnx_batchnorm(proto, destination, images=images)
        return FoldFileReport(
            source=source, output=destination, kind="onnx", folded=report.folded,
            batchnorm_nodes=report.batchnorm_nodes, unfolded=report.unfolded,
            params_before=report.params_before, params_after=report.params_after,
            max_abs=report.max_abs, images=report.images, preprocessing=origin,
        )
    if source.suffix != ".safetensors":
        raise ExportError(f"cannot fold {source}: expected a .safetensors checkpoint or an .onnx file")

    loaded = load_checkpoint(source)
    images = verification_images(loaded, data_dir=data_dir, count=verify_images)
    with replacing_atomically(destination) as temporary:
        verified = fold_export_verify(loaded, temporary, images, batch_sizes=[1, min(len(images), 64)])
    return FoldFileReport(
        source=source, output=destination, kind="checkpoint", folded=verified.folded.folded,
        batchnorm_nodes=verified.exported.batchnorm_nodes, unfolded=verified.folded.unfolded_reasons,
        params_before=verified.folded.params_before, params_after=verified.folded.params_after,
        max_abs=verified.fold_parity.max_abs, images=len(images), preprocessing="checkpoint",
        onnx_max_abs=verified.onnx_parity.max_abs,
    )


def _onnx_preprocessing(
    proto: onnx.ModelProto, *, shown: Path
) -> tuple[Preprocessing, Literal["metadata", "default"]]:
    stored = next((p.value for p in proto.metadata_props if p.key == "preprocessing"), None)
    if stored is not None:
        try:
            return Preprocessing.from_dict(json.loads(stored)), "metadata"
        except (json.JSONDecodeError, ResnetServeError) as exc:
            raise ExportError(f"{shown}: unusable preprocessing metadata: {first_line(exc)}") from exc
    initializers = {t.name for t in proto.graph.initializer}
    graph_input = next(value for value in proto.graph.input if value.name not in initializers)
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]]
    if not all(dims):
        raise ExportError(
            f"{shown}: input {graph_input.name!r} has a symbolic channel, height or width and no "
            "preprocessing metadata, so the size of the test images is unknown"
        )
    channels, height, width = dims
    try:
        preprocessing = Preprocessing(
            channels=channels, height=height, width=width,
            mean=(DEFAULT_ONNX_PREPROCESSING_MEAN,) * channels, std=(DEFAULT_ONNX_PREPROCESSING_STD,) * channels,
        )
    except ResnetServeError as exc:
        raise ExportError(f"{shown}: cannot feed test images to input {graph_input.name!r}: {exc}") from exc
    return preprocessing, "default"
