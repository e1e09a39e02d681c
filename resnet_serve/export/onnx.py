"""PyTorch → ONNX: one self-contained file, a dynamic batch axis, metadata, fully checked.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: with torch 2.13 the
torch.export-based one takes ~10× longer, prints progress to stdout, and cannot produce
opset 17 for our graphs (its opset-18 output fails down-conversion of ``Pad``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from resnet_serve.errors import ExportError

__all__ = ["OnnxExportResult", "count_ops", "export_onnx"]

BATCH_AXIS = "batch"
# Opset 10 is the first with a strided Slice (the CIFAR nets' option-A shortcut); 20 is the
# last the TorchScript exporter knows. Checking first also spares the user the exporter's habit
# of dumping its whole IR graph to stdout when it fails on an opset.
SUPPORTED_OPSETS = range(10, 21)

# Deprecation notices about the exporter we chose deliberately; everything else is reported.
_EXPECTED_WARNINGS = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
)


@dataclass
class OnnxExportResult:
    """What ``export_onnx`` wrote.

    Attributes:
        path: the ONNX file.
        opset: the default-domain opset it declares.
        input_name / output_name: graph input and output names.
        input_shape: the (C, H, W) of one image.
        dynamic_batch: whether the first axis is the symbolic ``batch``.
        op_counts: number of nodes per op type.
        batchnorm_nodes: ``BatchNormalization`` nodes left (0 once folded).
        size_bytes: file size.
        warnings: exporter warnings worth a look (deduplicated).
    """

    path: Path
    opset: int
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]
    dynamic_batch: bool
    op_counts: dict[str, int]
    batchnorm_nodes: int
    size_bytes: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        result = asdict(self)
        result["path"] = str(self.path)
        return result


def count_ops(model: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, int]:
    """Number of nodes per op type in the main graph, most frequent first."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    return dict(Counter(node.op_type for node in proto.graph.node).most_common())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, int, int],
    opset: int = 17,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "logits",
    metadata: dict[str, str] | None = None,
) -> OnnxExportResult:
    """Export ``model`` (traced in eval mode) to a single ONNX file at ``path``.

    The file is written next to its destination under a temporary name and moved into
    place only after ``onnx.checker`` (full check, with shape inference) accepts it, so a
    failure leaves neither a partial file nor a changed old one. ``metadata`` goes into the
    model's ``metadata_props``.

    Raises:
        ExportError: bad arguments, or the exporter or the checker failed.
    """
    if len(input_shape) != 3 or any(int(d) <= 0 for d in input_shape):
        raise ExportError(f"input_shape must be (channels, height, width) > 0, got {input_shape}")
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset {opset} is not supported; choose {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}"
        )
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ExportError(f"ONNX metadata must map str to str, got {key!r}: {value!r}")

    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    parameter = next(model.parameters(), None)
    # A batch of 2 keeps the tracer from specialising anything to a batch of 1.
    example = torch.zeros(
        (2 if dynamic_batch else 1, *input_shape),
        dtype=parameter.dtype if parameter is not None else torch.float32,
        device=parameter.device if parameter is not None else "cpu",
    )
    dynamic_axes = (
        {input_name: {0: BATCH_AXIS}, output_name: {0: BATCH_AXIS}} if dynamic_batch else None
    )

    fd, temporary_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
    )
    os.close(fd)
    temporary = Path(temporary_name)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                model,
                (example,),
                temporary,
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=dynamic_axes,
                training=torch.onnx.TrainingMode.EVAL,
                do_constant_folding=True,
            )
        proto = onnx.load(temporary)
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        _check_batch_axis(proto, dynamic_batch=dynamic_batch)
        onnx.save(proto, temporary, save_as_external_data=False)
        onnx.checker.check_model(temporary, full_check=True)
        os.replace(temporary, destination)
    except ExportError:
        temporary.unlink(missing_ok=True)
        raise
    except Exception as exc:
        temporary.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export to {destination} failed: {reason}") from exc

    op_counts = count_ops(proto)
    return OnnxExportResult(
        path=destination,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        input_name=input_name,
        output_name=output_name,
        input_shape=tuple(int(d) for d in input_shape),
        dynamic_batch=dynamic_batch,
        op_counts=op_counts,
        batchnorm_nodes=op_counts.get("BatchNormalization", 0),
        size_bytes=destination.stat().st_size,
        warnings=_reported_warnings(caught),
    )


def _check_batch_axis(proto: onnx.ModelProto, *, dynamic_batch: bool) -> None:
    if not dynamic_batch:
        return
    for value in (*proto.graph.input, *proto.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_param != BATCH_AXIS:
            raise ExportError(
                f"exported {value.name!r} has a fixed first axis ({first.dim_value}), "
                f"not the dynamic {BATCH_AXIS!r} axis asked for"
            )


def _reported_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    messages = (str(w.message).strip().splitlines()[0] for w in caught)
    return list(dict.fromkeys(m for m in messages if not m.startswith(_EXPECTED_WARNINGS)))
