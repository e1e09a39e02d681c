"""The layout of an `openvino` target entry, until the repository writer has that target: the
one place the tests make it, so switching them to the writer is one change.

Made from an `onnxruntime` entry: backend "openvino", the OpenVINO IR (model.xml + model.bin,
FP32 weights) in each version folder instead of model.onnx, and the official OpenVINO
backend's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import openvino
from google.protobuf import text_format

from resnet_serve.triton.config import parse_model_config


def convert_to_openvino_entry(entry: Path, *, parameters: Mapping[str, str] | None = None) -> None:
    config = parse_model_config((entry / "config.pbtxt").read_text())
    config.ClearField("platform")
    config.ClearField("default_model_filename")
    config.backend = "openvino"
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))
    for onnx_path in entry.glob("*/model.onnx"):
        ir = openvino.convert_model(str(onnx_path))
        openvino.save_model(ir, str(onnx_path.with_name("model.xml")), compress_to_fp16=False)
        onnx_path.unlink()
