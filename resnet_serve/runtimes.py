"""Runtimes: one model, run by one back end (PyTorch, onnxruntime, OpenVINO), behind one
small interface, and a factory that builds each named kind from a checkpoint.

A runtime is anything with a ``name`` and a ``run(batch) -> logits`` over float32 NCHW numpy
arrays. The verifier compares two of them; a benchmark can time any of them.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from resnet_serve.checkpoints import Checkpoint
from resnet_serve.errors import MissingDependencyError, VerificationError, first_line
from resnet_serve.export import export_onnx
from resnet_serve.export.fp16 import convert_fp16
from resnet_serve.export.quantize import CalibrationMethodName, QuantizationResult, quantize_int8

__all__ = [
    "RUNTIME_KINDS",
    "OnnxRuntime",
    "OpenVinoRuntime",
    "Runtime",
    "RuntimeFactory",
    "TorchRuntime",
    "as_batch",
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
        inputs = torch.from_numpy(as_batch(batch)).to(device=self._device, dtype=self._dtype)
        with torch.inference_mode():
            return self.model(inputs).float().cpu().numpy()


class OnnxRuntime:
    """An ONNX file (FP32, INT8 QDQ or FP16) run by onnxruntime's CPU provider.

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
            raise VerificationError(f"onnxruntime cannot load {self.path}: {first_line(exc)}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # A model converted without keep_io_types takes and returns float16.
        self._input_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = as_batch(batch).astype(self._input_dtype, copy=False)
        try:
            (logits,) = self.session.run([self.output_name], {self.input_name: feed})
        except Exception as exc:
            raise VerificationError(
                f"onnxruntime failed on {self.path} with a batch of shape {batch.shape}: "
                f"{first_line(exc)}"
            ) from exc
        return logits.astype(np.float32, copy=False)


# Our precision names → OpenVINO's element types for INFERENCE_PRECISION_HINT.
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoRuntime:
    """An ONNX file compiled by OpenVINO for the CPU.

    ``precision`` is the inference precision asked for (OpenVINO's
    ``INFERENCE_PRECISION_HINT``); on a CPU without BF16 instructions OpenVINO quietly computes
    in FP32, so ``inference_precision`` records what the compiled model really uses. An INT8
    (QDQ) file runs as INT8 whatever the hint.

    Raises:
        MissingDependencyError: OpenVINO is not installed.
        VerificationError: the file is missing or OpenVINO cannot compile it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        precision: Literal["fp32", "bf16"] = "fp32",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        try:
            import openvino
        except ImportError:
            raise MissingDependencyError(
                "OpenVINO is not installed; `pip install openvino` adds the openvino runtimes"
            ) from None
        if precision not in _OPENVINO_HINTS:
            raise VerificationError(f"OpenVINO precision must be fp32 or bf16, got {precision!r}")
        self.name = name or f"openvino-{precision}"
        self.path = Path(path)
        if not self.path.is_file():
            raise VerificationError(f"ONNX model {self.path} does not exist")
        # Explicit, because OpenVINO's CPU default is BF16 wherever the CPU supports it.
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision]}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line C++ context
            raise VerificationError(f"OpenVINO cannot compile {self.path}: {first_line(exc)}") from exc
        self.precision = precision
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._output = compiled.outputs[0]
        self._request = compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            result = self._request.infer({0: as_batch(batch)})
        except Exception as exc:
            raise VerificationError(
                f"OpenVINO failed on {self.path} with a batch of shape {batch.shape}: "
                f"{first_line(exc)}"
            ) from exc
        # The request reuses its output buffer on the next call.
        return np.array(result[self._output], dtype=np.float32)


class RuntimeFactory:
    """Builds runtimes of the named kinds (``RUNTIME_KINDS``) from one checkpoint.

    The files a kind needs are produced on first use in ``workdir`` and shared by every
    runtime built later: fold → ONNX FP32 → INT8 (calibrated on ``calibration_images``) or
    FP16. ``notes`` says, per kind built, how it was made.

    Args:
        checkpoint: the loaded checkpoint.
        workdir: an empty scratch folder for this factory's files.
        calibration_images: preprocessed training images for INT8 calibration (needed only
            for the int8 kinds).
        calibration_method: minmax, entropy or percentile.
        threads: intra-op threads for onnxruntime and OpenVINO; None lets them choose.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        workdir: str | os.PathLike[str],
        calibration_images: np.ndarray | None = None,
        calibration_method: CalibrationMethodName = "minmax",
        threads: int | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.workdir = Path(workdir)
        self.calibration_images = calibration_images
        self.calibration_method = calibration_method
        self.threads = threads
        self.notes: dict[str, str] = {}

    def build(self, kind: str) -> Runtime:
        """A runtime of ``kind``, named ``kind``.

        Raises:
            VerificationError: an unknown kind, or an int8 kind without calibration images.
            MissingDependencyError: the kind's back end is not installed.
            ExportError: producing its file failed.
        """
        match kind:
            case "torch":
                return TorchRuntime(self.checkpoint.model, name=kind)
            case "torch-folded":
                return TorchRuntime(self.folded_model, name=kind)
            case "onnx-fp32":
                return OnnxRuntime(self.onnx_fp32, threads=self.threads, name=kind)
            case "onnx-fp16":
                return OnnxRuntime(self.onnx_fp16, threads=self.threads, name=kind)
            case "onnx-int8":
                self.notes[kind] = self._int8_note
                return OnnxRuntime(self.onnx_int8.path, threads=self.threads, name=kind)
            case "openvino-fp32":
                return self._openvino(kind, self.onnx_fp32, "fp32")
            case "openvino-bf16":
                return self._openvino(kind, self.onnx_fp32, "bf16")
            case "openvino-int8":
                # OpenVINO reads onnxruntime's QDQ file and runs its convolutions in INT8.
                self.notes[kind] = self._int8_note
                return self._openvino(kind, self.onnx_int8.path, "fp32")
            case "tensorrt":
                # The hook for a TensorRT engine runtime, which needs TensorRT and a GPU.
                if importlib.util.find_spec("tensorrt") is None:
                    raise MissingDependencyError(
                        "TensorRT is not installed (it needs an NVIDIA GPU and NVIDIA's tensorrt "
                        "wheel); the tensorrt runtime is unavailable here"
                    )
                raise MissingDependencyError("this version of resnet-serve has no TensorRT runtime yet")
        raise VerificationError(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIME_KINDS)}")

    @cached_property
    def folded_model(self) -> nn.Module:
        # Imported here: folding checks itself with the verifier, which imports this module.
        from resnet_serve.fold import fold_batchnorm

        return fold_batchnorm(self.checkpoint.model).model

    @cached_property
    def onnx_fp32(self) -> Path:
        meta = self.checkpoint.meta
        return export_onnx(
            self.folded_model,
            self.workdir / "model-fp32.onnx",
            input_shape=meta.input_shape,
            metadata=meta.onnx_metadata(),
        ).path

    @cached_property
    def onnx_int8(self) -> QuantizationResult:
        if self.calibration_images is None:
            raise VerificationError("the int8 runtimes need calibration images")
        return quantize_int8(
            self.onnx_fp32,
            self.workdir / "model-int8.onnx",
            calibration_images=self.calibration_images,
            method=self.calibration_method,
        )

    @cached_property
    def onnx_fp16(self) -> Path:
        return convert_fp16(self.onnx_fp32, self.workdir / "model-fp16.onnx").path

    @property
    def _int8_note(self) -> str:
        result = self.onnx_int8
        return (
            f"static QDQ, per-channel weights, {result.method} calibration on "
            f"{result.calibration_images} training images; kept in FP32: "
            f"{', '.join(result.kept_fp32) or 'nothing'}"
        )

    def _openvino(self, kind: str, path: Path, precision: Literal["fp32", "bf16"]) -> Runtime:
        runtime = OpenVinoRuntime(path, precision=precision, threads=self.threads, name=kind)
        if runtime.inference_precision != _OPENVINO_HINTS[precision]:
            self.notes[kind] = f"OpenVINO computes in {runtime.inference_precision} on this CPU"
        return runtime


RUNTIME_KINDS: tuple[str, ...] = (
    "torch",
    "torch-folded",
    "onnx-fp32",
    "onnx-int8",
    "onnx-fp16",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "tensorrt",
)


def as_batch(batch: np.ndarray) -> np.ndarray:
    """``batch`` as a C-contiguous float32 NCHW array."""
    batch = np.asarray(batch)
    if batch.ndim != 4:
        raise VerificationError(f"expected an NCHW batch of images, got shape {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)
