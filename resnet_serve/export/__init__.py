"""Exporters, one module per deployment format: ``onnx`` (PyTorch → ONNX, and the safe reading
of foreign ONNX files), ``quantize`` (INT8), ``fp16`` and ``tensorrt``.

Each module offers one function that writes a single file atomically and returns a dataclass
describing what it wrote. The names below are the vocabulary they share with the pipeline and
the command line; they live here, free of heavy imports, so that the CLI can offer its choices
without loading PyTorch or onnx.
"""

from typing import Literal

__all__ = ["CalibrationMethod", "ExportFormat", "Exporter", "Precision"]

# The TorchScript-based exporter (fast, opsets 10–20) or the torch.export-based one (opset 18+).
Exporter = Literal["legacy", "dynamo"]
# What a served model computes in: onnx files in FP32, FP16 or INT8; TensorRT engines too.
Precision = Literal["fp32", "fp16", "int8"]
ExportFormat = Literal["onnx", "tensorrt"]
# How INT8 activation ranges are chosen from calibration images.
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
