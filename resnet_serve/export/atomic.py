"""Writing derived ONNX models (INT8, FP16) so that readers only ever see a complete, checked
file that still carries the metadata of the model it came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import onnx

from resnet_serve.errors import ExportError, first_line
from resnet_serve.files import replacing_atomically

__all__ = ["save_onnx_atomically"]


def save_onnx_atomically(
    proto: onnx.ModelProto,
    destination: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save ``proto`` as one self-contained file at ``destination``, after ``onnx.checker``
    (full check, with shape inference) accepts it.

    ``metadata`` entries are added to the model's ``metadata_props``, replacing any of the
    same key. The file is written beside its destination under a temporary name and renamed
    into place, so a failure leaves neither a partial file nor a changed old one.

    Raises:
        ExportError: the checker refused the model or the file could not be written.
    """
    merged = {entry.key: entry.value for entry in proto.metadata_props} | dict(metadata or {})
    del proto.metadata_props[:]
    for key, value in merged.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value

    destination = Path(destination)
    try:
        with replacing_atomically(destination) as temporary:
            onnx.save(proto, temporary, save_as_external_data=False)
            onnx.checker.check_model(temporary, full_check=True)
    except Exception as exc:
        raise ExportError(f"writing {destination} failed: {first_line(exc)}") from exc
    return destination
