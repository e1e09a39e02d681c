"""FP32 ONNX → FP16 ONNX for GPUs: weights and activations in half precision.

Convert the *folded* export: folding multiplies BatchNorm's scale into the weights in FP32,
and only the result is rounded to FP16, once. The conversion is onnxruntime's own
(``onnxruntime.transformers.float16``), which knows the ops that must stay FP32.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from resnet_serve.errors import ExportError, first_line
from resnet_serve.export.onnx import save_onnx_checked
from resnet_serve.files import asdict_with_paths

__all__ = ["Fp16ConversionResult", "convert_fp16"]


@dataclass(frozen=True)
class Fp16ConversionResult:
    """What ``convert_fp16`` wrote.

    Attributes:
        path: the FP16 ONNX file.
        keep_io_types: whether the graph's inputs and outputs stayed FP32 (with Cast nodes
            inside the graph).
        fp16_initializers: weights stored as float16.
        cast_nodes: Cast nodes in the converted graph.
        size_bytes / source_size_bytes: the FP16 file and the FP32 file it came from.
    """

    path: Path
    keep_io_types: bool
    fp16_initializers: int
    cast_nodes: int
    size_bytes: int
    source_size_bytes: int

    def to_dict(self) -> dict:
        return asdict_with_paths(self)


def convert_fp16(
    onnx_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    keep_io_types: bool = True,
) -> Fp16ConversionResult:
    """Convert an FP32 ONNX model to FP16 and write it atomically to ``output_path``.

    With ``keep_io_types`` (the default) clients keep sending and receiving float32: the
    graph casts at its edges. Without it the input and output tensors become float16.

    Raises:
        ExportError: an unreadable model, a failed conversion, or a result the ONNX checker
            refuses.
    """
    source = Path(onnx_path)
    if not source.is_file():
        raise ExportError(f"ONNX model {source} does not exist")
    # Imported here: onnxruntime.transformers pulls in much more than this one converter.
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        proto = onnx.load(source)
        converted = convert_float_to_float16(proto, keep_io_types=keep_io_types)
        # The converter appends its Cast nodes at the end of the node list; ONNX requires
        # nodes in topological order.
        OnnxModel.graph_topological_sort(converted.graph)
    except Exception as exc:
        raise ExportError(f"FP16 conversion of {source} failed: {first_line(exc)}") from exc
    destination = save_onnx_checked(
        converted,
        Path(output_path),
        metadata={"precision": "fp16", "fp16_io": "false" if keep_io_types else "true"},
    )

    initializer_types = Counter(init.data_type for init in converted.graph.initializer)
    return Fp16ConversionResult(
        path=destination,
        keep_io_types=keep_io_types,
        fp16_initializers=initializer_types.get(onnx.TensorProto.FLOAT16, 0),
        cast_nodes=sum(node.op_type == "Cast" for node in converted.graph.node),
        size_bytes=destination.stat().st_size,
        source_size_bytes=source.stat().st_size,
    )
