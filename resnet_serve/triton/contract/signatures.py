"""The tensors a model file declares, as the official backends read them: names, Triton data
types and shapes, with -1 for a dimension the file leaves open.

The onnxruntime backend asks an onnxruntime session, which reports the graph's inputs (less
initializers) and outputs with symbolic dimensions as -1; reading the ONNX graph itself gives
the same without building a session. OpenVINO's reading is in ``contract.openvino``, because
the OpenVINO backend changes the shapes (``set_batch``) before comparing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from resnet_serve.errors import first_line
from resnet_serve.triton.entry_files import file_problem

__all__ = ["ONNX_TYPES", "ModelSignature", "TensorSignature", "read_onnx_signature", "stoi"]

# ONNX element types and the Triton data types the onnxruntime backend maps them to.
ONNX_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16", "DOUBLE": "TYPE_FP64",
              "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
              "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64",
              "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING"}
# std::stoi, as backend_common's ParseIntValue calls it: white space, a sign, digits, then anything.
_STOI = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


def stoi(text: str) -> int | None:
    """What ``std::stoi`` makes of ``text`` ("4x" is 4), or None where it throws."""
    found = _STOI.match(text)
    return int(found.group(0)) if found else None


@dataclass(frozen=True)
class TensorSignature:
    data_type: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs by name; ``overridable`` are initializers a request may also feed."""

    inputs: dict[str, TensorSignature]
    outputs: dict[str, TensorSignature]
    overridable: frozenset[str] = frozenset()


def _onnx_tensor(value: onnx.ValueInfoProto) -> TensorSignature:
    tensor_type = value.type.tensor_type
    try:
        name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    except ValueError:
        name = f"element type {tensor_type.elem_type}"
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSignature(ONNX_TYPES.get(name, name), shape)


def read_onnx_signature(path: Path) -> ModelSignature | str:
    """The file's signature, or one line saying why it cannot be read."""
    if path.is_dir():
        # The onnxruntime backend's rule: a model folder holds model.onnx (and its data).
        path = path / "model.onnx"
    if not path.exists():
        return f"unable to find '{path}'"
    problem = file_problem(path)
    if problem:
        return problem
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # noqa: BLE001 - onnx raises several unrelated types
        return f"{path.name} is not a readable ONNX model ({first_line(error)})"
    initializers = {tensor.name for tensor in graph.initializer}
    return ModelSignature(
        inputs={v.name: _onnx_tensor(v) for v in graph.input if v.name not in initializers},
        outputs={v.name: _onnx_tensor(v) for v in graph.output},
        overridable=frozenset(v.name for v in graph.input if v.name in initializers),
    )
