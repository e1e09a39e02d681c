"""Stages chained for one checkpoint: fold → ONNX → verify → (INT8/FP16 or TensorRT) → Triton
repository entry; and ``fold_file``, the ``fold`` command's fold-and-check of one file."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnx

from resnet_serve.artifacts import Artifacts
from resnet_serve.checkpoints import load_checkpoint
from resnet_serve.errors import ExportError, ResnetServeError, VerificationError, first_line
from resnet_serve.export import CalibrationMethod, ExportFormat, Precision
from resnet_serve.export.fp16 import Fp16ConversionResult
from resnet_serve.export.onnx import OnnxExportResult, OnnxOptions, load_onnx_safely
from resnet_serve.export.quantize import CALIBRATION_METHODS, QuantizationResult
from resnet_serve.export.tensorrt import EngineOptions, EngineResult, build_engine, require_tensorrt
from resnet_serve.files import asdict_with_paths, replacing_atomically
from resnet_serve.fold import FoldResult, fold_onnx_batchnorm
from resnet_serve.parity import DEFAULT_MIN_AGREEMENT, ParityResult, Tolerance, check_parity
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.progress import Reporter, SilentReporter
from resnet_serve.runtimes import RUNTIMES, compare_runtimes
from resnet_serve.selection import ImageSelection, calibration_images, verification_images
from resnet_serve.triton.repository import Classifier, write_image_pipeline, write_model_entry
from resnet_serve.triton.serving import TENSORRT_PLAN, ServingOptions, ServingTarget, get_serving_target

__all__ = [
    "ExportOptions",
    "ExportReport",
    "FoldFileReport",
    "VerifiedOnnx",
    "default_fold_output",
    "default_model_name",
    "export_to_repository",
    "fold_export_verify",
    "fold_file",
]

_FORMATS: tuple[str, ...] = get_args(ExportFormat)
_PRECISIONS: tuple[str, ...] = get_args(Precision)
# The runtime kind that runs each lower-precision ONNX file.
_LOWER_PRECISION_KINDS = {"int8": "onnx-int8", "fp16": "onnx-fp16"}


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``export_to_repository`` is told, checked once, on construction.

    Attributes:
        name: the model's name in the repository; None takes the checkpoint's file name.
        format: ``onnx``, or ``tensorrt`` to build the verified ONNX into an engine.
        precision: what the served model computes in; None is fp32 for onnx, fp16 for tensorrt.
        serving: how the repository entry serves it (target, version, batching, warm-up, ...).
        onnx: exporter, opset, dynamic height/width and simplification.
        tolerance: what the folded model, the ONNX file and its simplification must meet
            against the original model.
        selection: the test images that verify and the training images that calibrate.
        calibration_method: INT8 activation ranges, for onnx int8.
        min_agreement: least top-1 agreement of an INT8 or FP16 file with the FP32 one.
        verify_batch_size: the larger batch size verified besides batch 1.
        engine: TensorRT's profile, workspace and caches (format tensorrt only).

    Raises:
        ExportError: an option out of range or a combination that cannot work.
    """

    name: str | None = None
    format: ExportFormat = "onnx"
    precision: Precision | None = None
    serving: ServingOptions = ServingOptions()
    onnx: OnnxOptions = OnnxOptions()
    tolerance: Tolerance = Tolerance()
    selection: ImageSelection = ImageSelection()
    calibration_method: CalibrationMethod = "minmax"
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    verify_batch_size: int = 64
    engine: EngineOptions | None = None

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise ExportError(f"unknown export format {self.format!r}; choose one of {', '.join(_FORMATS)}")
        if self.precision is None:
            object.__setattr__(self, "precision", "fp16" if self.format == "tensorrt" else "fp32")
        if self.precision not in _PRECISIONS:
            raise ExportError(
                f"unknown {'ONNX' if self.format == 'onnx' else 'TensorRT'} precision {self.precision!r}; "
                f"choose one of {', '.join(_PRECISIONS)}"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ExportError(
                f"unknown calibration method {self.calibration_method!r}; "
                f"choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError(f"the minimum top-1 agreement is a fraction from 0 to 1, got {self.min_agreement}")
        if self.verify_batch_size < 1:
            raise ExportError(f"verify_batch_size must be ≥ 1, got {self.verify_batch_size}")
        if self.format == "tensorrt":
            if self.engine is None:
                object.__setattr__(self, "engine", EngineOptions())
        elif self.engine is not None:
            raise ExportError("engine options apply only to the tensorrt format")
        elif get_serving_target(self.serving.target) is TENSORRT_PLAN:
            raise ExportError(f"the {TENSORRT_PLAN.name} target serves an engine: export with the tensorrt format")

    @property
    def serving_target(self) -> ServingTarget:
        return TENSORRT_PLAN if self.format == "tensorrt" else get_serving_target(self.serving.target)

    @property
    def lower_precision_tolerance(self) -> Tolerance:
        """What an INT8 or FP16 file must keep of the FP32 one: its top-1 class."""
        return Tolerance(rtol=None, min_top1_agreement=self.min_agreement)


@dataclass(frozen=True)
class ExportReport:
    """What ``export_to_repository`` did, each stage's own result included.

    ``onnx``, ``lower_precision`` and ``engine`` describe files made in a scratch folder that
    is gone; ``model_file`` is the copy the repository entry serves.
    """

    checkpoint: Path
    architecture: str
    name: str
    target: str
    entry: Path
    version: int
    model_file: Path
    image_pipeline: tuple[Path, ...] | None
    input_shape: tuple[int, int, int]
    precision: Precision
    options: ExportOptions
    folding: FoldResult
    fold_parity: ParityResult
    onnx: OnnxExportResult
    onnx_parity: ParityResult
    lower_precision: QuantizationResult | Fp16ConversionResult | None
    precision_parity: ParityResult | None
    engine: EngineResult | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict_with_paths(self)


def default_model_name(checkpoint: Path) -> str:
    """A Triton model name from a checkpoint's file name (resnet20-fashion.safetensors → resnet20-fashion)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", checkpoint.name.split(".")[0]) or "model"


@dataclass(frozen=True)
class VerifiedOnnx:
    """A checkpoint folded and exported, each step checked on real images."""

    folding: FoldResult
    fold_parity: ParityResult
    exported: OnnxExportResult
    onnx_parity: ParityResult


def fold_export_verify(
    artifacts: Artifacts, images: np.ndarray, *, batch_sizes: Sequence[int], tolerance: Tolerance
) -> VerifiedOnnx:
    """Fold the checkpoint's BatchNorms, export the folded model and check both on ``images``
    against the original model: the folded model at the largest batch size, onnxruntime on the
    file at every batch size, each within ``tolerance``, and no BatchNormalization node left.

    Raises:
        VerificationError: a check failed.
        ExportError: folding or exporting failed.
    """
    original = RUNTIMES["torch"].build(artifacts)
    fold_parity = compare_runtimes(
        original, RUNTIMES["torch-folded"].build(artifacts), images, batch_sizes=batch_sizes[-1:]
    )
    check_parity(fold_parity, tolerance)
    exported = artifacts.onnx_export
    if exported.batchnorm_nodes:
        raise VerificationError(f"the folded ONNX still has {exported.batchnorm_nodes} BatchNormalization nodes")
    # Against the original, unfolded model: the whole chain is what must hold.
    onnx_parity = compare_runtimes(original, RUNTIMES["onnx-fp32"].build(artifacts), images, batch_sizes=batch_sizes)
    check_parity(onnx_parity, tolerance)
    return VerifiedOnnx(artifacts.folding, fold_parity, exported, onnx_parity)


def export_to_repository(
    *,
    checkpoint: Path,
    repository: Path,
    options: ExportOptions = ExportOptions(),
    reporter: Reporter | None = None,
) -> ExportReport:
    """Fold, export and verify a checkpoint, then write its Triton repository entry.

    Nothing is written to the repository unless the folded model and onnxruntime on the ONNX
    file both match the original model within ``options.tolerance`` (logits within rtol of the
    largest logit, the same top-1 class up to near-ties) at batch 1 and at the verify batch
    size, on the selected real test images.

    With precision int8 or fp16 (format onnx) a lower-precision copy of the verified FP32 ONNX
    is served: INT8 static QDQ calibrated on the selected training images, or FP16 weights with
    FP32 inputs and outputs. It is written only if its top-1 class agrees with the FP32 file's
    on at least ``options.min_agreement`` of the test images at every batch size. With format
    tensorrt the verified ONNX is built into an engine (INT8 calibrated on the same training
    images) served through the ``tensorrt-plan`` target.
    """
    reporter = reporter or SilentReporter()
    began = time.perf_counter()
    if options.format == "tensorrt":
        # Before any work: without TensorRT and a GPU the whole export would be wasted.
        require_tensorrt()
    loaded = load_checkpoint(checkpoint)
    meta = loaded.meta
    name = options.name or default_model_name(checkpoint)
    # What the entry will serve: the verification and warm-up images are prepared with it too.
    preprocessing = options.serving.served_preprocessing(meta.preprocessing)
    images = verification_images(options.selection, preprocessing).images
    batch_sizes = (1, min(options.verify_batch_size, len(images)))

    with tempfile.TemporaryDirectory(prefix="resnet-serve-export-") as scratch:
        artifacts = Artifacts(
            loaded,
            workdir=Path(scratch),
            onnx=options.onnx,
            tolerance=options.tolerance,
            simplify_images=images,
            calibration=lambda: calibration_images(options.selection, preprocessing),
            calibration_method=options.calibration_method,
        )
        reporter.message(
            f"folding BatchNorm of {meta.architecture}, exporting ONNX ({options.onnx.exporter} exporter) "
            f"and verifying both on {len(images)} test images"
        )
        verified = fold_export_verify(artifacts, images, batch_sizes=batch_sizes, tolerance=options.tolerance)
        model_file, lower, precision_parity, engine = artifacts.onnx_fp32, None, None, None
        if options.format == "onnx" and options.precision != "fp32":
            reporter.message(
                f"making the {options.precision} ONNX and checking it against FP32 on {len(images)} test images"
            )
            lower = artifacts.int8 if options.precision == "int8" else artifacts.fp16
            precision_parity = compare_runtimes(
                RUNTIMES["onnx-fp32"].build(artifacts),
                RUNTIMES[_LOWER_PRECISION_KINDS[options.precision]].build(artifacts),
                images,
                batch_sizes=batch_sizes,
            )
            check_parity(precision_parity, options.lower_precision_tolerance)
            model_file = lower.path
        if options.format == "tensorrt":
            reporter.message(f"building a {options.precision} TensorRT engine")
            engine = build_engine(
                artifacts.onnx_fp32,
                Path(scratch) / TENSORRT_PLAN.model_filename,
                precision=options.precision,
                profile=options.engine.profile(
                    input_shape=meta.input_shape, max_batch_size=options.serving.max_batch_size
                ),
                workspace_bytes=options.engine.workspace_bytes,
                timing_cache_path=options.engine.timing_cache_path,
                calibration_images=artifacts.calibration() if options.precision == "int8" else None,
                calibration_cache_path=options.engine.calibration_cache_path,
            )
            model_file = engine.plan_path
        serving = options.serving
        classifier = Classifier(
            model_file=model_file, class_names=meta.class_names, preprocessing=preprocessing,
            metadata={
                "architecture": meta.architecture,
                "class_names": json.dumps(meta.class_names),
                "test_accuracy": json.dumps(meta.metrics.get("test_accuracy")),
            },
        )
        entry = write_model_entry(
            repository=repository, name=name, classifier=classifier,
            settings=dataclasses.replace(serving, target=options.serving_target.name),
            warmup_images=images[: serving.warmup_images] if serving.warmup_images else None, reporter=reporter,
        )
        image_pipeline = None
        if serving.image_pipeline:
            reporter.message(f"writing {name}-preprocess and the ensemble {name}-image, which take encoded images")
            image_pipeline = tuple(
                e.path for e in write_image_pipeline(
                    repository=repository, classifier=name, instances=serving.instances,
                    max_queue_delay_us=serving.max_queue_delay_us, reporter=reporter,
                )
            )
    return ExportReport(
        checkpoint=checkpoint,
        architecture=meta.architecture,
        name=name,
        target=options.serving_target.name,
        entry=entry.path,
        version=entry.version,
        model_file=entry.model_path,
        image_pipeline=image_pipeline,
        input_shape=meta.input_shape,
        precision=options.precision,
        options=options,
        folding=verified.folding,
        fold_parity=verified.fold_parity,
        onnx=verified.exported,
        onnx_parity=verified.onnx_parity,
        lower_precision=lower,
        precision_parity=precision_parity,
        engine=engine,
        seconds=time.perf_counter() - began,
    )


# For an ONNX file without preprocessing in its metadata: pixels of 0..1 scaled to about ±2,
# the spread a normalised input has, so the check exercises realistic activations.
DEFAULT_ONNX_PREPROCESSING_MEAN = 0.5
DEFAULT_ONNX_PREPROCESSING_STD = 0.25


@dataclass(frozen=True)
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
        preprocessing: where the images' preprocessing came from: ``checkpoint``,
            ``metadata`` (the ONNX file's ``preprocessing`` entry) or ``default``.
        fold_parity: folded vs unfolded model on the selected real test images.
        onnx_parity: for a checkpoint, onnxruntime on the written file vs the unfolded model.
    """

    source: Path
    output: Path
    kind: Literal["checkpoint", "onnx"]
    folded: int
    batchnorm_nodes: int
    unfolded: dict[str, str]
    params_before: int
    params_after: int
    preprocessing: Literal["checkpoint", "metadata", "default"]
    fold_parity: ParityResult
    onnx_parity: ParityResult | None = None

    def to_dict(self) -> dict:
        return asdict_with_paths(self)


def fold_file(
    source: Path,
    output: Path,
    *,
    selection: ImageSelection = ImageSelection(),
    tolerance: Tolerance = Tolerance(),
) -> FoldFileReport:
    """Fold the BatchNorms of a checkpoint (``.safetensors``) or an ONNX file into a folded ONNX.

    A checkpoint is folded in PyTorch (in float64, cast back once), checked against the
    unfolded model, exported with the legacy exporter at opset 17, and the file checked with
    onnxruntime against the unfolded model. An ONNX file goes through ``load_onnx_safely`` and
    the graph pass. Both are measured on the selected real test images, preprocessed as the
    checkpoint says, as the ONNX file's ``preprocessing`` metadata says, or else resized to the
    graph's input size with mean 0.5 and std 0.25 per channel, and must meet ``tolerance``.
    ``output`` is written only once every check passed, and never over ``source``.

    Raises:
        ExportError: ``output`` is ``source``, an unknown file type, an unsafe or malformed ONNX
            file, or a failed export.
        VerificationError: a check missed ``tolerance``.
    """
    if output.resolve() == source.resolve() or (output.exists() and source.exists() and output.samefile(source)):
        raise ExportError(f"refusing to fold {source} onto itself: give another --output")
    if source.suffix == ".onnx":
        proto = load_onnx_safely(source)
        preprocessing, origin = _onnx_preprocessing(proto, shown=source)
        images = verification_images(selection, preprocessing).images
        report = fold_onnx_batchnorm(proto, output, images=images, tolerance=tolerance)
        return FoldFileReport(
            source=source, output=output, kind="onnx", folded=report.folded,
            batchnorm_nodes=report.batchnorm_nodes, unfolded=report.unfolded,
            params_before=report.params_before, params_after=report.params_after,
            preprocessing=origin, fold_parity=report.parity,
        )
    if source.suffix != ".safetensors":
        raise ExportError(f"cannot fold {source}: expected a .safetensors checkpoint or an .onnx file")

    loaded = load_checkpoint(source)
    images = verification_images(selection, loaded.meta.preprocessing).images
    with tempfile.TemporaryDirectory(prefix="resnet-serve-fold-") as scratch:
        artifacts = Artifacts(loaded, workdir=Path(scratch), tolerance=tolerance)
        verified = fold_export_verify(artifacts, images, batch_sizes=(1, min(len(images), 64)), tolerance=tolerance)
        try:
            with replacing_atomically(output) as temporary:
                shutil.copyfile(verified.exported.path, temporary)
        except OSError as error:
            raise ExportError(f"cannot write {output}: {first_line(error)}") from None
    folding = verified.folding
    return FoldFileReport(
        source=source, output=output, kind="checkpoint", folded=folding.folded,
        batchnorm_nodes=verified.exported.batchnorm_nodes, unfolded=folding.unfolded_reasons,
        params_before=folding.params_before, params_after=folding.params_after, preprocessing="checkpoint",
        fold_parity=verified.fold_parity, onnx_parity=verified.onnx_parity,
    )


def default_fold_output(source: Path) -> Path:
    """Where ``fold`` writes by default: beside ``source``, its last suffix replaced by
    ``.folded.onnx`` (r20.safetensors → r20.folded.onnx, a.folded.onnx → a.folded.folded.onnx),
    so never ``source`` itself."""
    return source.with_name(f"{source.with_suffix('').name}.folded.onnx")


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
