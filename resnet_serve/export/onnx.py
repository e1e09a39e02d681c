"""PyTorch → ONNX: one self-contained file, dynamic axes, metadata, fully checked; and the safe
way to open an ONNX file somebody else made.

Two exporters are offered. ``legacy`` (TorchScript-based, the default) is fast and can target
opsets 10–20. ``dynamo`` (torch.export-based) takes ~10× longer, and with torch 2.13 produces
opset 18 or newer only: its opset-18 output fails down-conversion of ``Pad``, so lower opsets
are refused up front rather than attempted. Its graph comes out already optimised (BatchNorm
folded by onnxscript), so its node counts differ from the legacy exporter's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from torch import nn

from resnet_serve.errors import ExportError, first_line
from resnet_serve.export import Exporter
from resnet_serve.files import asdict_with_paths, replacing_atomically
from resnet_serve.parity import ParityResult, Tolerance, check_parity
from resnet_serve.preprocessing import MAX_IMAGE_SIDE
from resnet_serve.runtimes import OnnxRuntime, compare_runtimes

__all__ = [
    "DEFAULT_OPSETS",
    "OnnxExportResult",
    "OnnxOptions",
    "count_ops",
    "export_onnx",
    "load_onnx_safely",
    "save_onnx_checked",
]

BATCH_AXIS = "batch"
HEIGHT_AXIS = "height"
WIDTH_AXIS = "width"
# Opset 10 is the first with a strided Slice (the CIFAR nets' option-A shortcut); 20 is the
# last the TorchScript exporter knows. Checking first also spares the user the exporter's habit
# of dumping its whole IR graph to stdout when it fails on an opset.
SUPPORTED_OPSETS: dict[Exporter, range] = {"legacy": range(10, 21), "dynamo": range(18, 24)}
DEFAULT_OPSETS: dict[Exporter, int] = {"legacy": 17, "dynamo": 18}
# protobuf cannot serialise a message of 2 GiB or more; beyond that ONNX needs external data,
# which a single-file deployment must not silently grow.
MAX_SINGLE_FILE_BYTES = 2**31

# Deprecation notices about the exporter we chose deliberately; everything else is reported.
_EXPECTED_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class OnnxOptions:
    """How a model is exported to ONNX; checked on construction.

    Attributes:
        exporter: ``legacy`` (TorchScript) or ``dynamo`` (torch.export); see the module notes.
        opset: default-domain opset; None becomes 17 for ``legacy`` and 18 for ``dynamo``.
        dynamic_hw: also make the input's height and width symbolic (global pooling makes
            ResNets size-agnostic); the example traced is still the model's input shape.
        simplify: let onnxruntime's basic graph optimisations (constant folding, Identity and
            redundant-node removal, Conv+Add/Mul fusions; ONNX ops only) rewrite the graph,
            checked against the unsimplified graph.

    Raises:
        ExportError: an unknown exporter, or an opset it cannot write.
    """

    exporter: Exporter = "legacy"
    opset: int | None = None
    dynamic_hw: bool = False
    simplify: bool = False

    def __post_init__(self) -> None:
        if self.exporter not in SUPPORTED_OPSETS:
            raise ExportError(f"unknown exporter {self.exporter!r}; choose legacy or dynamo")
        if self.opset is None:
            object.__setattr__(self, "opset", DEFAULT_OPSETS[self.exporter])
        supported = SUPPORTED_OPSETS[self.exporter]
        if self.opset not in supported:
            raise ExportError(
                f"opset {self.opset} is not supported by the {self.exporter} exporter; "
                f"choose {supported[0]} to {supported[-1]}"
            )


@dataclass
class OnnxExportResult:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the ONNX file.
        opset: the default-domain opset it declares.
        exporter: ``legacy`` or ``dynamo``.
        input_name / output_name: graph input and output names.
        input_shape: the (C, H, W) of one image traced.
        dynamic_batch: whether the first axis is the symbolic ``batch``.
        dynamic_hw: whether height and width are the symbolic ``height`` and ``width``.
        op_counts: number of nodes per op type.
        batchnorm_nodes: ``BatchNormalization`` nodes left (0 once folded).
        size_bytes: file size.
        simplified_nodes_removed: nodes removed by simplification (0 without it).
        simplify_parity: simplified vs unsimplified graph, if simplified.
        warnings: exporter warnings worth a look (deduplicated).
    """

    path: Path
    opset: int
    exporter: Exporter
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]
    dynamic_batch: bool
    dynamic_hw: bool
    op_counts: dict[str, int]
    batchnorm_nodes: int
    size_bytes: int
    simplified_nodes_removed: int = 0
    simplify_parity: ParityResult | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict_with_paths(self)


def count_ops(model: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, int]:
    """Number of nodes per op type in the main graph, most frequent first."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    return dict(Counter(node.op_type for node in proto.graph.node).most_common())


def save_onnx_checked(
    proto: onnx.ModelProto,
    destination: Path,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save ``proto`` as one self-contained file at ``destination``, after ``onnx.checker``
    (full check, with shape inference) accepts it.

    ``metadata`` entries are added to the model's ``metadata_props``, replacing any of the
    same key. The file is written beside its destination under a temporary name and renamed
    into place, so a failure leaves neither a partial file nor a changed old one.

    Raises:
        ExportError: a model of 2 GiB or more, the checker refused it, or it could not be written.
    """
    merged = {entry.key: entry.value for entry in proto.metadata_props} | dict(metadata or {})
    for key, value in merged.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ExportError(f"ONNX metadata must map str to str, got {key!r}: {value!r}")
    del proto.metadata_props[:]
    for key, value in merged.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if proto.ByteSize() >= MAX_SINGLE_FILE_BYTES:
        raise ExportError(f"{destination} would exceed protobuf's 2 GiB limit for one ONNX file")
    try:
        with replacing_atomically(destination) as temporary:
            onnx.save(proto, temporary, save_as_external_data=False)
            onnx.checker.check_model(temporary, full_check=True)
    except Exception as exc:  # the checker and protobuf raise several unrelated types
        raise ExportError(f"writing {destination} failed: {first_line(exc)}") from exc
    return destination


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    input_shape: tuple[int, int, int],
    options: OnnxOptions = OnnxOptions(),
    dynamic_batch: bool = True,
    simplify_images: np.ndarray | None = None,
    tolerance: Tolerance = Tolerance(),
    input_name: str = "input",
    output_name: str = "logits",
    metadata: Mapping[str, str] | None = None,
) -> OnnxExportResult:
    """Export ``model`` (traced in eval mode) to a single ONNX file at ``path``.

    The file appears through ``save_onnx_checked``: whole, checked, or not at all.
    ``metadata`` goes into the model's ``metadata_props``.

    Args:
        options: exporter, opset, dynamic height/width and simplification.
        dynamic_batch: make the first axis of input and output the symbolic ``batch``.
        simplify_images: the N×C×H×W float32 inputs the simplified graph is checked on,
            within ``tolerance``; default: 4 seeded standard-normal images, the scale of
            normalised pixels.

    Raises:
        ExportError: bad arguments, weights of 2 GiB or more (protobuf's limit for one file),
            or the exporter or the checker failed.
        VerificationError: the simplified graph differs from the unsimplified one.
    """
    if len(input_shape) != 3 or any(int(d) <= 0 for d in input_shape):
        raise ExportError(f"input_shape must be (channels, height, width) > 0, got {input_shape}")
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weight_bytes >= MAX_SINGLE_FILE_BYTES:
        raise ExportError(
            f"the model's weights take {weight_bytes / 2**30:.2f} GiB; one ONNX file holds less "
            "than 2 GiB (protobuf's limit) and external data is not written"
        )

    destination = Path(path)
    parameter = next(model.parameters(), None)
    # A batch of 2 keeps the tracer from specialising anything to a batch of 1.
    example = torch.zeros(
        (2 if dynamic_batch else 1, *input_shape),
        dtype=parameter.dtype if parameter is not None else torch.float32,
        device=parameter.device if parameter is not None else "cpu",
    )
    input_axes = {0: BATCH_AXIS} if dynamic_batch else {}
    if options.dynamic_hw:
        input_axes |= {2: HEIGHT_AXIS, 3: WIDTH_AXIS}
    dynamic_axes = (
        {input_name: input_axes, output_name: {0: BATCH_AXIS} if dynamic_batch else {}}
        if input_axes
        else None
    )

    with tempfile.TemporaryDirectory(prefix="resnet-serve-export-onnx-") as scratch:
        exported = Path(scratch) / "exported.onnx"
        try:
            caught = _run_exporter(
                model, example, exported, exporter=options.exporter, opset=options.opset,
                input_name=input_name, output_name=output_name, dynamic_axes=dynamic_axes,
            )
            proto = onnx.load(exported)
        except Exception as exc:  # the exporters raise anything from RuntimeError to their own types
            raise ExportError(f"ONNX export to {destination} failed: {first_line(exc)}") from exc
        _check_dynamic_axes(proto, dynamic_batch=dynamic_batch, dynamic_hw=options.dynamic_hw)
        nodes_removed, simplify_parity = 0, None
        if options.simplify:
            images = (
                simplify_images
                if simplify_images is not None
                else np.random.default_rng(0).standard_normal((4, *input_shape), dtype=np.float32)
            )
            simplified, simplify_parity = _simplify(exported, images=images, tolerance=tolerance)
            nodes_removed = len(proto.graph.node) - len(simplified.graph.node)
            proto = simplified
    save_onnx_checked(proto, destination, metadata=metadata)

    op_counts = count_ops(proto)
    return OnnxExportResult(
        path=destination,
        opset=_default_opset(proto),
        exporter=options.exporter,
        input_name=input_name,
        output_name=output_name,
        input_shape=tuple(int(d) for d in input_shape),
        dynamic_batch=dynamic_batch,
        dynamic_hw=options.dynamic_hw,
        op_counts=op_counts,
        batchnorm_nodes=op_counts.get("BatchNormalization", 0),
        size_bytes=destination.stat().st_size,
        simplified_nodes_removed=nodes_removed,
        simplify_parity=simplify_parity,
        warnings=_reported_warnings(caught),
    )


def load_onnx_safely(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load a user's ONNX file, refusing anything unsafe or not shaped like an image classifier.

    The proto is first read without external data, and every external-data ``location`` is
    checked before any of those files is opened: absolute paths, ``..`` components and paths
    that resolve (symlinks followed) outside the model's folder are refused. Then the external
    data is loaded, ``onnx.checker`` runs its full check, and the graph must look like a
    ResNet: one float N×C×H×W input whose fixed height and width are at most
    ``MAX_IMAGE_SIDE``, one 2-D output, at least one Conv.

    Raises:
        ExportError: one line saying what is wrong with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model {path} does not exist or is not a file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ExportError(f"{path} is not a valid ONNX model: {first_line(exc)}") from exc
    if not proto.graph.node:
        raise ExportError(f"{path} is not a valid ONNX model: it has no graph nodes")
    folder = path.parent
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external_location(tensor, folder=folder, shown=path)
    try:
        onnx.load_external_data_for_model(proto, os.fspath(folder))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # the checker and the loader raise several unrelated types
        raise ExportError(f"{path} is not a valid ONNX model: {first_line(exc)}") from exc
    _check_resnet_like(proto, shown=path)
    return proto


def _run_exporter(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    exporter: Exporter,
    opset: int,
    input_name: str,
    output_name: str,
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> list[warnings.WarningMessage]:
    common = {
        "opset_version": opset,
        "input_names": [input_name],
        "output_names": [output_name],
        "dynamic_axes": dynamic_axes,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if exporter == "legacy":
            torch.onnx.export(
                model, (example,), path, dynamo=False, training=torch.onnx.TrainingMode.EVAL,
                do_constant_folding=True, **common,
            )
        else:
            # The dynamo exporter prints its progress and logs optional-package notices;
            # library code stays quiet, so both are swallowed here.
            onnx_logger = logging.getLogger("torch.onnx")
            level, was_training = onnx_logger.level, model.training
            onnx_logger.setLevel(logging.ERROR)
            model.eval()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, **common)
            finally:
                onnx_logger.setLevel(level)
                model.train(was_training)
    return caught


def _simplify(path: Path, *, images: np.ndarray, tolerance: Tolerance) -> tuple[onnx.ModelProto, ParityResult]:
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="resnet-serve-simplify-") as scratch:
        simplified_path = Path(scratch) / "simplified.onnx"
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(simplified_path)
        onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        simplified = onnx.load(simplified_path)
        # onnxruntime declares every domain it knows; keep only those the graph uses.
        used = {node.domain or "" for node in simplified.graph.node} | {""}
        kept = [o for o in simplified.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
        del simplified.opset_import[:]
        simplified.opset_import.extend(kept)
        onnx.save(simplified, simplified_path)
        parity = compare_runtimes(
            OnnxRuntime(path, name="unsimplified", graph_optimizations=False),
            OnnxRuntime(simplified_path, name="simplified", graph_optimizations=False),
            images,
            batch_sizes=(1, len(images)),
        )
    check_parity(parity, tolerance)
    return simplified, parity


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check_dynamic_axes(proto: onnx.ModelProto, *, dynamic_batch: bool, dynamic_hw: bool) -> None:
    expected = [(value, 0, BATCH_AXIS) for value in (*proto.graph.input, *proto.graph.output)] if dynamic_batch else []
    if dynamic_hw:
        expected += [(proto.graph.input[0], 2, HEIGHT_AXIS), (proto.graph.input[0], 3, WIDTH_AXIS)]
    for value, axis, symbol in expected:
        dim = value.type.tensor_type.shape.dim[axis]
        if dim.dim_param != symbol:
            raise ExportError(
                f"exported {value.name!r} has a fixed axis {axis} ({dim.dim_value}), "
                f"not the dynamic {symbol!r} axis asked for"
            )


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that may carry external data: initializers and constants, in subgraphs too."""
    graphs = [proto.graph]
    nodes = [node for function in proto.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def _check_external_location(tensor: onnx.TensorProto, *, folder: Path, shown: Path) -> None:
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    # PureWindowsPath splits on both separators, so "a\..\b" and "a/../b" are caught alike.
    windows = PureWindowsPath(location)
    if not location or PurePosixPath(location).is_absolute() or windows.is_absolute() or windows.drive:
        problem = "has no location" if not location else f"uses the absolute path {location!r}"
    elif ".." in windows.parts:
        problem = f"points to {location!r}, with '..'"
    elif not (folder / location).resolve().is_relative_to(folder.resolve()):
        problem = f"points to {location!r}, which resolves outside the model's folder"
    else:
        return
    raise ExportError(f"refusing {shown}: external data of tensor {tensor.name!r} {problem}")


def _check_resnet_like(proto: onnx.ModelProto, *, shown: Path) -> None:
    graph = proto.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    problem = None
    if len(inputs) != 1 or len(graph.output) != 1:
        problem = f"it has {len(inputs)} inputs and {len(graph.output)} outputs, not one of each"
    elif (
        inputs[0].type.tensor_type.elem_type not in _FLOAT_TYPES
        or len(inputs[0].type.tensor_type.shape.dim) != 4
    ):
        problem = f"its input {inputs[0].name!r} is not a 4-D float N×C×H×W tensor"
    elif any(d.HasField("dim_value") and d.dim_value > MAX_IMAGE_SIDE for d in _image_dims(inputs[0])):
        # Test images are allocated at this size before the graph ever runs.
        height, width = (d.dim_value or d.dim_param or "?" for d in _image_dims(inputs[0]))
        problem = f"its input {inputs[0].name!r} is {height}×{width}, over the {MAX_IMAGE_SIDE} pixels a side may have"
    elif len(graph.output[0].type.tensor_type.shape.dim) != 2:
        problem = f"its output {graph.output[0].name!r} is not 2-D (batch × classes)"
    elif not any(node.op_type == "Conv" for node in graph.node):
        problem = "it has no Conv node"
    if problem:
        raise ExportError(f"{shown} is not a ResNet-like image classifier: {problem}")


def _image_dims(value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    """Height and width of an N×C×H×W input."""
    return list(value.type.tensor_type.shape.dim[2:])


def _reported_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    messages = (str(w.message).strip().splitlines()[0] for w in caught)
    return list(dict.fromkeys(m for m in messages if not m.startswith(_EXPECTED_WARNINGS)))

