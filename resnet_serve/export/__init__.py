"""Exporters, one module per deployment target (ONNX here; INT8, FP16, TensorRT beside it).

Each target module offers one ``export_<target>`` function that writes a single file
atomically and returns a dataclass describing what it wrote.
"""

from resnet_serve.export.onnx import (
    OnnxExportResult,
    OnnxGraphRuntime,
    count_ops,
    export_onnx,
    load_onnx_safely,
)

__all__ = [
    "OnnxExportResult",
    "OnnxGraphRuntime",
    "count_ops",
    "export_onnx",
    "load_onnx_safely",
]
