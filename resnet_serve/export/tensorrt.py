"""ONNX → TensorRT engine (``.plan``): FP32, FP16 or INT8, one dynamic-batch profile.

Written against the TensorRT 10 Python API. ``tensorrt`` and CUDA are needed only to build,
and are imported inside the functions that build, so everything else here (profiles,
calibration batches, cache files, the sidecar) works and is tested on a machine without
either. An engine only runs on the GPU model and TensorRT version that built it, so every
``.plan`` gets a JSON sidecar (``<plan>.json``) that records both, and what it was built for.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import numpy as np

from resnet_serve.errors import ExportError, MissingDependencyError, first_line
from resnet_serve.export import Precision
from resnet_serve.files import asdict_with_paths, replacing_atomically
from resnet_serve.official_image import TRITON_CONTAINER_TAG

__all__ = [
    "PRECISIONS",
    "EngineOptions",
    "EngineResult",
    "EngineSidecar",
    "OptimizationProfile",
    "build_engine",
    "calibration_batches",
    "entropy_calibrator",
    "load_cache",
    "require_tensorrt",
    "save_cache",
    "sidecar_path",
]

PRECISIONS: tuple[str, ...] = get_args(Precision)
_MISSING_TENSORRT = (
    "TensorRT is not installed: on a CUDA machine `pip install tensorrt` from NVIDIA's index"
)
_MISSING_GPU = "building a TensorRT engine needs an NVIDIA GPU; none is visible"


@dataclass(frozen=True)
class OptimizationProfile:
    """The batch sizes an engine accepts (``min``..``max``) and is tuned for (``opt``).

    ``input_shape`` is one image's (C, H, W); only the batch axis is dynamic.
    """

    min_batch: int
    opt_batch: int
    max_batch: int
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(
                "an optimisation profile needs 1 <= min <= opt <= max batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if len(self.input_shape) != 3 or any(d <= 0 for d in self.input_shape):
            raise ExportError(
                f"input_shape must be (channels, height, width) > 0, got {self.input_shape}"
            )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The (min, opt, max) input shapes, as ``IOptimizationProfile.set_shape`` takes them."""
        image = self.input_shape
        return (self.min_batch, *image), (self.opt_batch, *image), (self.max_batch, *image)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape)}


@dataclass(frozen=True)
class EngineOptions:
    """How the export pipeline builds an engine, before the model's input shape is known.

    ``opt_batch`` defaults to ``max_batch``: under load Triton's dynamic batcher fills batches
    up, so that is the size worth tuning for. ``max_batch`` defaults to the served
    ``max_batch_size``. The precision, and the images INT8 calibrates on, are the export's
    own (``ExportOptions.precision`` and ``.selection``).
    """

    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_bytes: int = 1 << 30
    timing_cache_path: Path | None = None
    calibration_cache_path: Path | None = None

    def __post_init__(self) -> None:
        if self.workspace_bytes < 1:
            raise ExportError(f"workspace limit must be positive, got {self.workspace_bytes} bytes")

    def profile(
        self, *, input_shape: tuple[int, int, int], max_batch_size: int
    ) -> OptimizationProfile:
        max_batch = self.max_batch or max_batch_size
        if max_batch < max_batch_size:
            raise ExportError(
                f"the engine's max batch {max_batch} is below the served max_batch_size "
                f"{max_batch_size}: Triton would send batches the engine refuses"
            )
        return OptimizationProfile(
            min_batch=self.min_batch,
            opt_batch=self.opt_batch or max_batch,
            max_batch=max_batch,
            input_shape=input_shape,
        )


def calibration_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Contiguous float32 (N, C, H, W) batches of exactly ``batch_size`` images.

    A last partial batch is dropped rather than padded: padding (zeros or repeats) would add
    values that are not in the data to the histograms the entropy calibrator picks its ranges
    from. Fewer images than one batch is refused.

    Raises:
        ExportError: not an (N, C, H, W) array, or fewer than ``batch_size`` images.
    """
    if batch_size < 1:
        raise ExportError(f"calibration batch size must be >= 1, got {batch_size}")
    if images.ndim != 4:
        raise ExportError(f"calibration images must be (N, C, H, W), got shape {images.shape}")
    if len(images) < batch_size:
        raise ExportError(
            f"INT8 calibration needs at least one batch of {batch_size} images, got {len(images)}"
        )
    for start in range(0, len(images) - batch_size + 1, batch_size):
        yield np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)


def load_cache(path: str | os.PathLike[str] | None) -> bytes:
    """A timing or calibration cache file's bytes; a missing file (or no path) is empty."""
    if path is None:
        return b""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as error:
        raise ExportError(f"cannot read cache {path}: {error}") from None


def save_cache(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a cache file atomically: a crash mid-write must not leave a cache TensorRT rejects.

    Raises:
        ExportError: the file cannot be written.
    """
    try:
        with replacing_atomically(path) as temporary:
            temporary.write_bytes(bytes(data))
    except OSError as error:
        raise ExportError(f"cannot write {path}: {first_line(error)}") from None


def sidecar_path(plan_path: str | os.PathLike[str]) -> Path:
    """Where an engine's sidecar lives: ``model.plan`` → ``model.plan.json``."""
    plan = Path(plan_path)
    return plan.with_name(f"{plan.name}.json")


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built with and for; it is only valid on the same GPU and TensorRT."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: OptimizationProfile
    triton_container_tag: str
    onnx_sha256: str
    built_at: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "profile": self.profile.to_dict()}

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the sidecar as JSON, atomically; ExportError if it cannot be written."""
        try:
            with replacing_atomically(path) as temporary:
                temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise ExportError(f"cannot write {path}: {first_line(error)}") from None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EngineSidecar:
        """Read a sidecar back; ExportError if it is missing, not JSON or lacks a field."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            profile = OptimizationProfile(**data.pop("profile"))
            expected = {f.name for f in fields(cls)} - {"profile"}
            if set(data) != expected:
                raise ExportError(
                    f"engine sidecar {path} has fields {sorted(data)}, expected {sorted(expected)}"
                )
            return cls(profile=profile, **{key: str(value) for key, value in data.items()})
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise ExportError(f"cannot read engine sidecar {path}: {error}") from None


@dataclass(frozen=True)
class EngineResult:
    """What ``build_engine`` wrote."""

    plan_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    size_bytes: int
    build_seconds: float
    timing_cache_path: Path | None
    calibration_cache_path: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict_with_paths(self), "sidecar": self.sidecar.to_dict()}


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, once both it and a CUDA GPU are known to be there.

    Raises:
        MissingDependencyError: tensorrt (or PyTorch) is not installed.
        ExportError: no CUDA GPU is visible.
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(_MISSING_TENSORRT) from None
    import torch

    if not torch.cuda.is_available():
        raise ExportError(_MISSING_GPU)
    return trt


def entropy_calibrator(
    batches: Iterable[np.ndarray], *, batch_size: int, cache_path: Path | None
) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` that feeds ``batches`` and keeps its cache in a file.

    Batches reach the GPU through one preallocated torch CUDA tensor whose ``data_ptr()``
    TensorRT reads, so no pycuda is needed. An existing, non-empty cache file makes
    TensorRT skip calibration and reuse its scales.
    """
    trt = require_tensorrt()
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            # The binding needs the base initialiser called explicitly.
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            host = torch.from_numpy(batch)
            if self._device is None or self._device.shape != host.shape:
                self._device = torch.empty(host.shape, dtype=torch.float32, device="cuda")
            self._device.copy_(host)
            # TensorRT reads the buffer on its own stream after this returns.
            torch.cuda.synchronize()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return load_cache(cache_path) or None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None:
                save_cache(cache_path, bytes(cache))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str],
    *,
    precision: Precision,
    profile: OptimizationProfile,
    workspace_bytes: int = 1 << 30,
    timing_cache_path: str | os.PathLike[str] | None = None,
    calibration_images: np.ndarray | None = None,
    calibration_cache_path: str | os.PathLike[str] | None = None,
    triton_container_tag: str = TRITON_CONTAINER_TAG,
) -> EngineResult:
    """Build a serialized TensorRT engine from an ONNX file with a dynamic batch axis.

    INT8 calibrates on ``calibration_images`` (preprocessed, (N, C, H, W)) in batches of the
    profile's ``opt_batch``, the shape TensorRT calibrates with; with an existing
    ``calibration_cache_path`` the images may be left out. The timing cache is read before and
    written after the build, so rebuilds on the same GPU skip most kernel timing. The plan and
    its sidecar are written atomically, only after the build succeeded.

    Raises:
        ExportError: bad arguments, no GPU, the ONNX does not parse or the build failed.
        MissingDependencyError: tensorrt is not installed.
    """
    onnx_file, plan = Path(onnx_path), Path(plan_path)
    calibration_cache = Path(calibration_cache_path) if calibration_cache_path else None
    timing_cache = Path(timing_cache_path) if timing_cache_path else None
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    if workspace_bytes < 1:
        raise ExportError(f"workspace limit must be positive, got {workspace_bytes} bytes")
    if not onnx_file.is_file():
        raise ExportError(f"ONNX model {onnx_file} does not exist")
    if precision == "int8" and calibration_images is None and not load_cache(calibration_cache):
        raise ExportError("INT8 needs calibration images or an existing calibration cache")
    trt = require_tensorrt()
    import torch

    began = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch: no creation flag is needed.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_file}: {errors or 'unknown error'}")
    if network.num_inputs != 1:
        raise ExportError(f"{onnx_file} has {network.num_inputs} inputs; expected one image input")
    network_input = network.get_input(0)
    image_dims = tuple(network_input.shape)[1:]
    # -1 is a dynamic axis, which the profile's extent then fixes.
    if len(image_dims) != 3 or any(d not in (-1, e) for d, e in zip(image_dims, profile.input_shape, strict=True)):
        raise ExportError(
            f"{onnx_file} takes images of shape {list(image_dims)}, "
            f"the profile is for {list(profile.input_shape)}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(network_input.name, *profile.shapes())
    config.add_optimization_profile(trt_profile)
    cache = config.create_timing_cache(load_cache(timing_cache))
    # Timings from another TensorRT version or GPU would mislead the tactic choice.
    config.set_timing_cache(cache, False)
    if precision in ("fp16", "int8"):
        # INT8 keeps FP16 allowed so layers without INT8 kernels fall back to FP16, not FP32.
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        batches = (
            calibration_batches(calibration_images, profile.opt_batch)
            if calibration_images is not None else iter(())
        )
        config.int8_calibrator = entropy_calibrator(
            batches, batch_size=profile.opt_batch, cache_path=calibration_cache
        )
        config.set_calibration_profile(trt_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT could not build a {precision} engine from {onnx_file} (see its log above)"
        )
    if timing_cache is not None:
        save_cache(timing_cache, bytes(config.get_timing_cache().serialize()))

    major, minor = torch.cuda.get_device_capability()
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__,
        gpu_name=torch.cuda.get_device_name(),
        compute_capability=f"{major}.{minor}",
        precision=precision,
        profile=profile,
        triton_container_tag=triton_container_tag,
        onnx_sha256=hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    try:
        with replacing_atomically(plan) as temporary:
            temporary.write_bytes(bytes(serialized))
    except OSError as error:
        raise ExportError(f"cannot write {plan}: {first_line(error)}") from None
    sidecar.write(sidecar_path(plan))
    return EngineResult(
        plan_path=plan,
        sidecar_path=sidecar_path(plan),
        sidecar=sidecar,
        size_bytes=plan.stat().st_size,
        build_seconds=time.perf_counter() - began,
        timing_cache_path=timing_cache,
        calibration_cache_path=calibration_cache if precision == "int8" else None,
    )
