"""Runtimes: one model run by one back end (PyTorch, onnxruntime, OpenVINO) behind one small
interface, and the one registry of named runtime kinds that ``verify`` and the CLI offer.

A runtime is anything with a ``name`` and a ``run(batch) -> logits`` over float32 NCHW numpy
arrays. A kind in ``RUNTIMES`` builds its runtime from the files of one checkpoint, which it
asks of a ``ModelFiles`` (``resnet_serve.artifacts.Artifacts`` produces them on demand); this
module never exports, folds or quantizes anything itself.

PyTorch, onnxruntime and OpenVINO are imported where a runtime is built, so that the CLI can
list the kinds without loading any of them.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from resnet_serve.errors import MissingDependencyError, VerificationError, first_line
from resnet_serve.parity import ParityAccumulator, ParityResult

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "RUNTIMES",
    "ModelFiles",
    "OnnxRuntime",
    "OpenVinoRuntime",
    "Runtime",
    "RuntimeKind",
    "TorchRuntime",
    "add_to_parity",
    "as_batch",
    "compare_runtimes",
    "get_runtime_kind",
    "run_batched",
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
        self._device = parameter.device if parameter is not None else "cpu"
        self._dtype = parameter.dtype if parameter is not None else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        inputs = torch.from_numpy(as_batch(batch)).to(device=self._device, dtype=self._dtype or torch.float32)
        with torch.inference_mode():
            return self.model(inputs).float().cpu().numpy()


class OnnxRuntime:
    """An ONNX file (FP32, INT8 QDQ or FP16) run by onnxruntime's CPU provider.

    Args:
        path: the ONNX file.
        threads: intra-op threads; None lets onnxruntime choose.
        name: how reports call this runtime.
        graph_optimizations: False turns every onnxruntime graph optimisation off. Comparing
            two graphs needs that: its Conv+BatchNorm fusion, constant folding and Identity
            removal would otherwise turn both into the same graph, and the comparison would
            prove nothing about the files.
    """

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        name: str = "onnxruntime",
        graph_optimizations: bool = True,
    ) -> None:
        import onnxruntime

        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise VerificationError(f"ONNX model {self.path} does not exist")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        if not graph_optimizations:
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
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


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """Give the calling thread back its alternate signal stack after the block.

    OpenVINO's CPU plugin (2026.4) swaps in an alternate stack of its own while a compiled model
    lives and puts back the one it found when the model goes; two models freed in the order
    they were built left the thread on the first one's unmapped stack. CPython installs every
    Python signal handler with SA_ONSTACK, so the next such signal (SIGCHLD once a DataLoader
    has had workers, SIGINT on Ctrl-C) killed the process with SIGSEGV: the test suite died
    that way in a subprocess.run after verify had built its OpenVINO runtimes.
    """
    kept = _signal_stack()
    try:
        yield
    finally:
        if kept is not None:
            ctypes.CDLL(None).sigaltstack(ctypes.byref(kept), None)


def _signal_stack() -> _SignalStack | None:
    """The calling thread's alternate signal stack, or None where libc does not say."""
    current = _SignalStack()
    return current if ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current)) == 0 else None


# Our precision names → OpenVINO's element types for INFERENCE_PRECISION_HINT.
_OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoRuntime:
    """An ONNX file compiled by OpenVINO for the CPU.

    ``precision`` is the inference precision asked for (OpenVINO's
    ``INFERENCE_PRECISION_HINT``); on a CPU without BF16 instructions OpenVINO quietly computes
    in FP32, so ``inference_precision`` records what the compiled model really uses and
    ``note`` says so when it differs. None asks for nothing, as Triton's OpenVINO backend does
    (it has no setting for FP32): OpenVINO's CPU default, which is BF16 wherever the CPU has
    BF16 instructions. An INT8 (QDQ) file runs as INT8 whatever the hint.

    Raises:
        MissingDependencyError: OpenVINO is not installed.
        VerificationError: the file is missing or OpenVINO cannot compile it.
    """

    def __init__(
        self,
        path: Path,
        *,
        precision: Literal["fp32", "bf16"] | None = "fp32",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        try:
            import openvino
        except ImportError:
            raise MissingDependencyError(
                "OpenVINO is not installed; `pip install openvino` adds the openvino runtimes"
            ) from None
        if precision is not None and precision not in _OPENVINO_HINTS:
            raise VerificationError(f"OpenVINO precision must be fp32, bf16 or None, got {precision!r}")
        self.name = name or f"openvino-{precision or 'default'}"
        self.path = Path(path)
        if not self.path.is_file():
            raise VerificationError(f"ONNX model {self.path} does not exist")
        # Explicit unless None, because OpenVINO's CPU default is BF16 wherever the CPU supports it.
        config: dict[str, str | int] = (
            {} if precision is None else {"INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision]}
        )
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            with _signal_stack_kept():
                compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line C++ context
            raise VerificationError(f"OpenVINO cannot compile {self.path}: {first_line(exc)}") from exc
        self.precision = precision
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._output = compiled.outputs[0]
        self._request = compiled.create_infer_request()

    @property
    def note(self) -> str | None:
        """What the compiled model really computes in, when that is not what was asked for."""
        if self.precision is None or self.inference_precision == _OPENVINO_HINTS[self.precision]:
            return None
        return f"OpenVINO computes in {self.inference_precision} on this CPU"

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


def as_batch(batch: np.ndarray) -> np.ndarray:
    """``batch`` as a C-contiguous float32 NCHW array."""
    batch = np.asarray(batch)
    if batch.ndim != 4:
        raise VerificationError(f"expected an NCHW batch of images, got shape {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def run_batched(runtime: Runtime, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of all ``images``, run ``batch_size`` at a time (the last batch may be smaller)."""
    outputs = [runtime.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)


def add_to_parity(
    accumulator: ParityAccumulator,
    reference: Runtime,
    candidate: Runtime,
    images: np.ndarray,
    *,
    labels: np.ndarray | None = None,
) -> None:
    """Run one chunk of ``images`` through both runtimes and add their logits to ``accumulator``.

    The reference runs once, in batches of the largest size; the candidate runs the chunk at
    every one of the accumulator's batch sizes, since batch-dependent kernels are a common
    source of divergence.
    """
    images = as_batch(images)
    expected = run_batched(reference, images, max(accumulator.batch_sizes))
    actual = {b: run_batched(candidate, images, b) for b in accumulator.batch_sizes}
    accumulator.add(expected, actual, labels)


def compare_runtimes(
    reference: Runtime,
    candidate: Runtime,
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    labels: np.ndarray | None = None,
) -> ParityResult:
    """Parity of ``candidate`` with ``reference`` on ``images`` (float32 NCHW) at every batch
    size; with ``labels`` (one class index per image) both runtimes' top-1 accuracy too.

    Raises:
        VerificationError: no images, a bad batch size, labels that do not match the images,
            or outputs of different shapes.
    """
    accumulator = ParityAccumulator(reference=reference.name, candidate=candidate.name, batch_sizes=batch_sizes)
    add_to_parity(accumulator, reference, candidate, images, labels=labels)
    return accumulator.result()


class ModelFiles(Protocol):
    """The models of one checkpoint that runtime kinds are built from."""

    @property
    def model(self) -> nn.Module:
        """The checkpoint's model as trained."""

    @property
    def folded_model(self) -> nn.Module:
        """The model with every BatchNorm folded into its convolution."""

    @property
    def onnx_fp32(self) -> Path:
        """The folded model exported to ONNX."""

    @property
    def onnx_int8(self) -> Path:
        """The FP32 ONNX quantized to INT8 (static QDQ)."""

    @property
    def onnx_fp16(self) -> Path:
        """The FP32 ONNX with FP16 weights."""


@dataclass(frozen=True)
class RuntimeKind:
    """A named way to run a checkpoint: what it is (``help``) and how to build it."""

    name: str
    help: str
    builder: Callable[[ModelFiles, int | None], Runtime]

    def build(self, files: ModelFiles, *, threads: int | None = None) -> Runtime:
        """A runtime of this kind, named after it; ``threads`` for onnxruntime and OpenVINO.

        Raises:
            MissingDependencyError: the kind's back end is not installed.
            VerificationError / ExportError: its file could not be made or loaded.
        """
        return self.builder(files, threads)


def _kinds(*kinds: RuntimeKind) -> dict[str, RuntimeKind]:
    return {kind.name: kind for kind in kinds}


RUNTIMES: dict[str, RuntimeKind] = _kinds(
    RuntimeKind("torch", "the checkpoint's PyTorch model", lambda f, _: TorchRuntime(f.model, name="torch")),
    RuntimeKind(
        "torch-folded", "PyTorch with every BatchNorm folded into its convolution",
        lambda f, _: TorchRuntime(f.folded_model, name="torch-folded"),
    ),
    RuntimeKind(
        "onnx-fp32", "onnxruntime on the folded FP32 ONNX export",
        lambda f, t: OnnxRuntime(f.onnx_fp32, threads=t, name="onnx-fp32"),
    ),
    RuntimeKind(
        "onnx-int8", "onnxruntime on that ONNX quantized to INT8 (static QDQ, calibrated on training images)",
        lambda f, t: OnnxRuntime(f.onnx_int8, threads=t, name="onnx-int8"),
    ),
    RuntimeKind(
        "onnx-fp16", "onnxruntime on that ONNX with FP16 weights",
        lambda f, t: OnnxRuntime(f.onnx_fp16, threads=t, name="onnx-fp16"),
    ),
    RuntimeKind(
        "openvino-fp32", "OpenVINO on the FP32 ONNX, computing in FP32",
        lambda f, t: OpenVinoRuntime(f.onnx_fp32, precision="fp32", threads=t, name="openvino-fp32"),
    ),
    RuntimeKind(
        "openvino-bf16", "OpenVINO on the FP32 ONNX, computing in BF16 where the CPU can",
        lambda f, t: OpenVinoRuntime(f.onnx_fp32, precision="bf16", threads=t, name="openvino-bf16"),
    ),
    # OpenVINO reads onnxruntime's QDQ file and runs its convolutions in INT8.
    RuntimeKind(
        "openvino-int8", "OpenVINO on the INT8 ONNX",
        lambda f, t: OpenVinoRuntime(f.onnx_int8, precision="fp32", threads=t, name="openvino-int8"),
    ),
)


def get_runtime_kind(name: str) -> RuntimeKind:
    """The kind called ``name``.

    Raises:
        VerificationError: no kind has that name.
    """
    try:
        return RUNTIMES[name]
    except KeyError:
        raise VerificationError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}") from None
