"""Write and read entries of a Triton model repository.

One entry is laid out as Triton expects it:

    <repository>/<name>/config.pbtxt
    <repository>/<name>/labels.txt          one class name per line (classification extension)
    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/<version>/model.plan + model.plan.json   (TensorRT engine + its sidecar)
    <repository>/<name>/<version>/model.py  only for targets that run in the python backend

Preprocessing and other metadata travel in the config's `parameters`, so any client can read
them from the server (`GET /v2/models/<name>/config`) instead of guessing.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import onnx

from resnet_serve.errors import RepositoryError
from resnet_serve.files import give_default_permissions
from resnet_serve.triton.config import (
    PYTHON_ONNXRUNTIME,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    ServingTarget,
    TensorConfig,
    get_serving_target,
)

__all__ = [
    "CONFIG_FILENAME",
    "INPUT_NAME",
    "LABELS_FILENAME",
    "OUTPUT_NAME",
    "PREPROCESSING_PARAMETER",
    "TARGET_PARAMETER",
    "ModelEntry",
    "list_model_entries",
    "read_model_entry",
    "write_model_entry",
]

CONFIG_FILENAME = "config.pbtxt"
LABELS_FILENAME = "labels.txt"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PREPROCESSING_PARAMETER = "preprocessing"
TARGET_PARAMETER = "serving_target"

# Triton turns each folder of the repository into a model name that also appears in URLs.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a repository, as written or read back."""

    name: str
    version: int
    path: Path
    config_path: Path
    labels_path: Path
    model_path: Path
    config: ModelConfig
    class_names: tuple[str, ...]

    @property
    def preprocessing(self) -> dict[str, Any]:
        text = self.config.parameters.get(PREPROCESSING_PARAMETER)
        return json.loads(text) if text else {}


def _check_name(name: str) -> None:
    if not _MODEL_NAME.match(name) or name in (".", ".."):
        raise RepositoryError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "not starting with '.' or '-' and without path separators"
        )


def _check_onnx(path: Path, *, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Refuse an ONNX file whose tensors do not match the config written beside it."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # noqa: BLE001 - onnx raises several unrelated types
        raise RepositoryError(f"{path} is not a readable ONNX model: {error}") from None

    def shape(value: onnx.ValueInfoProto) -> list[int | None]:
        # Symbolic or unknown dimensions (the dynamic batch) come back as None.
        return [d.dim_value if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim]

    inputs = {value.name: shape(value) for value in graph.input}
    outputs = {value.name: shape(value) for value in graph.output}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise RepositoryError(
            f"{path} must have input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
            f"has inputs {list(inputs)} and outputs {list(outputs)}"
        )
    expected_input: list[int | None] = [None, *input_shape]
    got_input = inputs[INPUT_NAME]
    if len(got_input) != 4 or any(
        g is not None and e is not None and g != e for g, e in zip(got_input, expected_input, strict=True)
    ):
        raise RepositoryError(
            f"{path}: input {INPUT_NAME!r} has shape {got_input}, expected [batch, "
            f"{', '.join(map(str, input_shape))}]"
        )
    if got_input[0] is not None:
        raise RepositoryError(f"{path}: input {INPUT_NAME!r} needs a dynamic batch dimension")
    got_output = outputs[OUTPUT_NAME]
    if len(got_output) != 2 or got_output[1] not in (None, num_classes):
        raise RepositoryError(
            f"{path}: output {OUTPUT_NAME!r} has shape {got_output}, "
            f"expected [batch, {num_classes}] for {num_classes} class names"
        )


def _check_arguments(
    *,
    name: str,
    onnx_path: Path,
    class_names: Sequence[str],
    preprocessing: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    version: int,
    metadata: Mapping[str, str],
) -> str:
    """Validate what can be checked before touching the disk; return the preprocessing JSON."""
    _check_name(name)
    if not onnx_path.is_file():
        raise RepositoryError(f"model file {onnx_path} does not exist")
    if not class_names:
        raise RepositoryError("a classifier needs at least one class name")
    bad = [c for c in class_names if not c.strip() or "\n" in c or "\r" in c]
    if bad:
        raise RepositoryError(f"class names must be non-empty single lines, got {bad!r}")
    if len(input_shape) != 3 or any(int(d) <= 0 for d in input_shape):
        raise RepositoryError(f"input_shape must be (channels, height, width), got {input_shape}")
    if version < 1:
        # Triton ignores version folders named 0.
        raise RepositoryError(f"model version must be >= 1, got {version}")
    if PREPROCESSING_PARAMETER in metadata or TARGET_PARAMETER in metadata:
        raise RepositoryError(
            f"metadata keys {PREPROCESSING_PARAMETER!r} and {TARGET_PARAMETER!r} are reserved"
        )
    try:
        return json.dumps(dict(preprocessing), sort_keys=True)
    except (TypeError, ValueError) as error:
        raise RepositoryError(f"preprocessing is not JSON-serialisable: {error}") from None


def write_model_entry(
    *,
    repository: Path,
    name: str,
    onnx_path: Path,
    class_names: Sequence[str],
    preprocessing: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    target: ServingTarget = PYTHON_ONNXRUNTIME,
    max_batch_size: int = 64,
    version: int = 1,
    instances: int = 1,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_us: int = 100,
    intra_op_threads: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ModelEntry:
    """Write (or replace) one model entry atomically and return it.

    ``onnx_path`` is the model file the target serves: ONNX, or for ``TENSORRT_PLAN`` an
    engine with its ``<plan>.json`` sidecar beside it.

    The entry is built in a hidden folder inside the repository, read back and checked, then
    swapped in with renames: a failed write leaves the repository exactly as it was. A server
    polling the repository may briefly miss the entry between the two renames of a replace.
    """
    metadata = dict(metadata or {})
    preprocessing_json = _check_arguments(
        name=name, onnx_path=onnx_path, class_names=class_names, preprocessing=preprocessing,
        input_shape=input_shape, version=version, metadata=metadata,
    )
    parameters = {
        **metadata,
        PREPROCESSING_PARAMETER: preprocessing_json,
        TARGET_PARAMETER: target.name,
    }
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise RepositoryError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        # The key the official onnxruntime backend reads; our python model reads it too.
        parameters["intra_op_thread_count"] = str(intra_op_threads)
    config = ModelConfig(
        name=name,
        backend=target.backend,
        platform=target.platform,
        max_batch_size=max_batch_size,
        inputs=(TensorConfig(name=INPUT_NAME, data_type="TYPE_FP32", dims=input_shape),),
        outputs=(
            TensorConfig(
                name=OUTPUT_NAME,
                data_type="TYPE_FP32",
                dims=(len(class_names),),
                label_filename=LABELS_FILENAME,
            ),
        ),
        dynamic_batching=DynamicBatching(
            preferred_batch_size=tuple(preferred_batch_sizes),
            max_queue_delay_microseconds=max_queue_delay_us,
        ),
        instance_groups=(InstanceGroup(count=instances, kind=target.instance_kind),),
        parameters=parameters,
        # The python backend loads model.py by default; the model file is found by model.py.
        default_model_filename="" if target.copies_python_model else target.model_filename,
    )

    try:
        repository.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=repository))
        give_default_permissions(staging)
    except OSError as error:
        raise RepositoryError(f"cannot write to model repository {repository}: {error}") from None
    try:
        _build_entry(
            staging, config=config, onnx_path=onnx_path, class_names=class_names,
            input_shape=input_shape, target=target, version=version,
        )
        _swap_in(staging, repository / name)
    except OSError as error:
        raise RepositoryError(f"writing model {name!r} to {repository} failed: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_model_entry(repository=repository, name=name, version=version)


def _build_entry(
    folder: Path,
    *,
    config: ModelConfig,
    onnx_path: Path,
    class_names: Sequence[str],
    input_shape: tuple[int, int, int],
    target: ServingTarget,
    version: int,
) -> None:
    text = config.render()
    # Read back through Triton's schema and our dataclasses: what lands on disk must parse to
    # exactly the config we meant.
    if ModelConfig.parse(text) != config:
        raise RepositoryError(f"model {config.name!r}: the rendered config does not read back")
    (folder / CONFIG_FILENAME).write_text(text, encoding="utf-8")
    (folder / LABELS_FILENAME).write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    version_folder = folder / str(version)
    version_folder.mkdir()
    model_path = version_folder / target.model_filename
    shutil.copyfile(onnx_path, model_path)
    if model_path.suffix == ".onnx":
        _check_onnx(model_path, input_shape=input_shape, num_classes=len(class_names))
    else:
        # A TensorRT plan cannot be inspected without TensorRT and its GPU; the JSON sidecar
        # that records which ones it needs travels with it instead.
        sidecar = onnx_path.with_name(f"{onnx_path.name}.json")
        if not sidecar.is_file():
            raise RepositoryError(f"{onnx_path} has no sidecar {sidecar.name} beside it")
        shutil.copyfile(sidecar, model_path.with_name(f"{model_path.name}.json"))
    if target.copies_python_model:
        template = resources.files("resnet_serve.triton").joinpath(
            "python_model", target.python_model
        )
        (version_folder / "model.py").write_text(template.read_text(encoding="utf-8"),
                                                encoding="utf-8")


def _swap_in(staging: Path, destination: Path) -> None:
    if not destination.exists():
        staging.rename(destination)
        return
    old = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex[:8]}")
    destination.rename(old)
    try:
        staging.rename(destination)
    except OSError:
        old.rename(destination)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_model_entry(*, repository: Path, name: str, version: int | None = None) -> ModelEntry:
    """Read one entry back; `version` defaults to the highest version folder present."""
    _check_name(name)
    folder = repository / name
    config_path = folder / CONFIG_FILENAME
    try:
        config = ModelConfig.parse(config_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RepositoryError(f"cannot read model {name!r} in {repository}: {error}") from None
    if config.name != name:
        raise RepositoryError(f"{config_path} names model {config.name!r}, expected {name!r}")
    if version is None:
        versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise RepositoryError(f"model {name!r} in {repository} has no version folder")
        version = max(versions)
    labelled = [t.label_filename for t in config.outputs if t.label_filename]
    labels_path = folder / (labelled[0] if labelled else LABELS_FILENAME)
    class_names = (
        tuple(labels_path.read_text(encoding="utf-8").splitlines()) if labels_path.is_file() else ()
    )
    target_name = config.parameters.get(TARGET_PARAMETER)
    model_filename = (
        get_serving_target(target_name).model_filename if target_name
        else config.default_model_filename or "model.onnx"
    )
    return ModelEntry(
        name=name,
        version=version,
        path=folder,
        config_path=config_path,
        labels_path=labels_path,
        model_path=folder / str(version) / model_filename,
        config=config,
        class_names=class_names,
    )


def list_model_entries(repository: Path) -> list[ModelEntry]:
    """Every entry of a repository, sorted by name; hidden (staging) folders are skipped."""
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist")
    return [
        read_model_entry(repository=repository, name=folder.name)
        for folder in sorted(repository.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
        and (folder / CONFIG_FILENAME).is_file()
    ]
