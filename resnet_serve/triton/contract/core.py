"""What Triton's core refuses for every backend: names, versions, shapes, instance groups,
labels and warm-up (triton-inference-server/core, read at r24.10 and r26.06)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import triton_to_np_dtype

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.contract.facts import EntryFacts, read_version_number
from resnet_serve.triton.contract.rules import Rule, Source
from resnet_serve.triton.entry_files import file_problem, read_bounded

__all__ = ["CORE_RULES", "dims_match", "shape_text"]

_CORE = "core"
_BOTH = "r26.06"
_MCU = "src/model_config_utils.cc"
_KNOWN_PAIRS = {"tensorrt": {"tensorrt_plan"}, "onnxruntime": {"onnxruntime_onnx"}, "pytorch": {"pytorch_libtorch"},
                "tensorflow": {"tensorflow_savedmodel", "tensorflow_graphdef"}}
_DataType = model_config_pb2.DataType
# A TYPE_STRING warm-up sample is read whole (an encoded image or two).
MAX_WARMUP_STRING_BYTES = 64 << 20
_Kind = model_config_pb2.ModelInstanceGroup


def shape_text(dims: object) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"  # type: ignore[attr-defined]


def dims_match(expected: object, given: object) -> bool:
    """Core's shape comparison: the same rank, and each pair equal or either -1."""
    expected, given = list(expected), list(given)  # type: ignore[call-overload]
    return len(expected) == len(given) and all(a == b or -1 in (a, b) for a, b in zip(expected, given, strict=True))


def _directory_name(facts: EntryFacts) -> Iterator[str]:
    if facts.config.name and facts.config.name != facts.folder_name:
        yield (f"unexpected directory name '{facts.folder_name}' for model '{facts.config.name}', "
               "directory name must equal model name")


def _backend(facts: EntryFacts) -> Iterator[str]:
    config = facts.config
    if config.platform == "ensemble":
        if config.backend:
            yield f"Ensemble model '{facts.name}' must have platform type 'ensemble' and empty backend type"
        return
    if not facts.backend:
        yield (f"core cannot tell the backend of model '{facts.name}': its config names no backend, no known "
               "platform and no default model file, and its first version folder holds none")
        return
    platforms = _KNOWN_PAIRS.get(facts.backend)
    if config.platform and platforms is not None and config.platform not in platforms:
        yield f"unexpected 'platform' and 'backend' pair, got:{config.platform}, {facts.backend}"


def _batching(facts: EntryFacts) -> Iterator[str]:
    config = facts.config
    if config.max_batch_size < 0:
        yield f"'max_batch_size' must be non-negative value for {facts.name}"
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0:
                yield f"dynamic batching preferred size must be positive for {facts.name}"
            elif size > config.max_batch_size:
                yield f"dynamic batching preferred size must be <= max batch size for {facts.name} ({size} > " \
                      f"{config.max_batch_size})"


def _tensors(facts: EntryFacts) -> Iterator[str]:
    for kind, tensors in (("input", facts.config.input), ("output", facts.config.output)):
        for tensor in tensors:
            prefix = f"model {kind} '{tensor.name}'"
            if not tensor.name:
                yield f"model {kind} must specify 'name' for {facts.name}"
            elif tensor.data_type == _DataType.TYPE_INVALID:
                yield f"{prefix} must specify 'data_type' for {facts.name}"
            elif not tensor.dims:
                yield f"{prefix} must specify 'dims' for {facts.name}"
            elif any(d < 1 and d != -1 for d in tensor.dims):
                yield (f"{prefix} dimension must be integer >= 1, or -1 to indicate a variable-size dimension "
                       f"for {facts.name} (dims {shape_text(tensor.dims)})")


def _input_format(facts: EntryFacts) -> Iterator[str]:
    image_formats = (model_config_pb2.ModelInput.FORMAT_NCHW, model_config_pb2.ModelInput.FORMAT_NHWC)
    for tensor in facts.config.input:
        if tensor.format in image_formats and len(tensor.dims) != 3:
            yield (f"model input NHWC/NCHW require 3 dims (input '{tensor.name}' is "
                   f"{model_config_pb2.ModelInput.Format.Name(tensor.format)} with dims {shape_text(tensor.dims)})")


def _versions(facts: EntryFacts) -> Iterator[str]:
    for name in facts.subfolders:
        number = read_version_number(name)
        if number is not None and str(number) != name:
            yield (f"version folder '{name}' is read as version {number} (std::stoll), whose files core then looks "
                   f"for in '{number}'; name version folders with the number alone")
    if not facts.versions:
        yield f"at least one version must be available under the version policy of model '{facts.name}'"


def _instance_groups(facts: EntryFacts) -> Iterator[str]:
    if facts.backend == "ensemble":
        return
    for host in facts.hosts():
        kinds = facts.instance_kinds(host)
        for index, (group, resolved) in enumerate(zip(facts.config.instance_group, kinds, strict=False)):
            label = group.name or f"{facts.name}_{index}"
            if resolved in ("KIND_CPU", "KIND_MODEL") and group.gpus:
                where = " (on a host without a GPU, where KIND_AUTO is KIND_CPU)" if group.kind != _Kind.KIND_CPU \
                    and resolved == "KIND_CPU" else ""
                yield f"instance group {label} of model {facts.name} has kind {resolved} but specifies one or more " \
                      f"GPUs{where}"
                return
        if host == "cpu" and "KIND_GPU" in kinds:
            yield (f"instance group of model {facts.name} has kind KIND_GPU but no GPUs are available "
                   "(on a host without a GPU)")
            return


def _labels(facts: EntryFacts) -> Iterator[str]:
    for tensor in facts.config.output:
        if tensor.label_filename and not (facts.folder / tensor.label_filename).is_file():
            yield f"failed to open text file for read {facts.folder / tensor.label_filename}: no such file"


def _string_elements(data: bytes) -> int | None:
    """How many length-prefixed elements fill ``data`` exactly (None: malformed)."""
    count, offset = 0, 0
    while offset < len(data):
        if offset + 4 > len(data):
            return None
        offset += 4 + int.from_bytes(data[offset:offset + 4], "little")
        count += 1
    return count if offset == len(data) else None


def _warmup(facts: EntryFacts) -> Iterator[str]:
    config = facts.config
    inputs = {tensor.name: tensor for tensor in config.input}
    for sample in config.model_warmup:
        if sample.batch_size == 0:  # skipped by core without a word
            continue
        where = f"warm-up sample '{sample.name}'"
        if config.max_batch_size and sample.batch_size > config.max_batch_size:
            yield f"{where}: inference request batch-size must be <= {config.max_batch_size} for '{facts.name}'"
        missing = sorted(set(inputs) - set(sample.inputs))
        if missing:
            yield f"{where}: expected {len(inputs)} inputs but got {len(sample.inputs)}; missing {missing}"
        for name, value in sample.inputs.items():
            yield from (f"{where}: {problem}" for problem in _warmup_input(facts, name, value, inputs.get(name)))


def _warmup_input(facts: EntryFacts, name: str, value: model_config_pb2.ModelWarmup.Input,
                  tensor: model_config_pb2.ModelInput | None) -> Iterator[str]:
    dims = list(value.dims)
    if -1 in dims:
        yield f"warmup setting expects all variable-size dimensions are specified for input '{name}'"
        return
    if tensor is not None:
        if value.data_type != tensor.data_type:
            yield (f"inference input '{name}' data-type is '{_DataType.Name(value.data_type)}', but model "
                   f"'{facts.name}' expects '{_DataType.Name(tensor.data_type)}'")
        if not dims_match(tensor.dims, dims):
            yield f"unexpected shape for input '{name}'. Expected {shape_text(tensor.dims)}, got {shape_text(dims)}"
    source = value.WhichOneof("input_data_type")
    if source is None:
        yield f"warmup setting expects input '{name}' to have input_data_type set"
    elif source == "input_data_file":
        path = facts.folder / "warmup" / value.input_data_file
        elements = int(np.prod(dims)) if dims else 1
        problem = file_problem(path)
        if problem:
            yield f"cannot read the warm-up file: {problem}"
        elif value.data_type == _DataType.TYPE_STRING:
            try:
                found = _string_elements(read_bounded(path, limit=MAX_WARMUP_STRING_BYTES))
            except RepositoryError as error:
                yield f"warm-up file {error}"
                return
            if found != elements:
                yield (f"{path.name} must hold {elements} length-prefixed string element(s), "
                       f"{'is malformed' if found is None else f'holds {found}'}")
        else:
            itemsize = np.dtype(triton_to_np_dtype(_DataType.Name(value.data_type)[len("TYPE_"):])).itemsize
            size = path.stat().st_size
            if size < elements * itemsize:
                yield (f"warmup setting expects {elements * itemsize} bytes, but the data provided from "
                       f"{path.name} only has {size} bytes")


_REPOSITORY_MANAGER = "src/model_repository_manager/model_repository_manager.cc"
_LIFECYCLE = "src/model_repository_manager/model_lifecycle.cc"
_INSTANCE = "src/backend_model_instance.cc"

CORE_RULES: tuple[Rule, ...] = (
    Rule("core.directory-name", _CORE, "load",
         "A config's `name` is its folder's name (an empty one is filled in from the folder).",
         "unexpected directory name '<dir>' for model '<name>', directory name must equal model name",
         (Source(_CORE, _REPOSITORY_MANAGER, "1654-1659", checked=_BOTH),), _directory_name),
    Rule("core.backend", _CORE, "load",
         "Core must tell the backend from `backend`, `platform`, `default_model_filename` or the first version "
         "folder's files; the known backends take only their own platform.",
         "unexpected 'platform' and 'backend' pair, got:<platform>, <backend>",
         (Source(_CORE, _MCU, "1089-1240"), Source(_CORE, _MCU, "1380-1408", checked=_BOTH)), _backend),
    Rule("core.batching", _CORE, "load",
         "`max_batch_size` is ≥ 0; every preferred batch size of the dynamic batcher is > 0 and ≤ `max_batch_size`.",
         "dynamic batching preferred size must be <= max batch size for <name>",
         (Source(_CORE, _MCU, "1411-1437", checked=_BOTH),), _batching),
    Rule("core.tensor-shape", _CORE, "load",
         "Every input and output has a name, a data type and non-empty dims, each ≥ 1 or -1.",
         "model input '<name>' dimension must be integer >= 1, or -1 to indicate a variable-size dimension",
         (Source(_CORE, _MCU, "296-340", checked=_BOTH),), _tensors),
    Rule("core.input-format", _CORE, "load",
         "An input declared FORMAT_NCHW or FORMAT_NHWC has exactly 3 dims (the batch not counted).",
         "model input NHWC/NCHW require 3 dims",
         (Source(_CORE, _MCU, "1750-1755", checked="r26.06 (1826-1831)"),), _input_format),
    Rule("core.versions", _CORE, "load",
         "Version folders are read with std::stoll (several characters starting with '0': ignored); at least one "
         "version must be left by the version policy.",
         "at least one version must be available under the version policy of model '<name>'",
         (Source(_CORE, _LIFECYCLE, "101-113", checked=_BOTH), Source(_CORE, _LIFECYCLE, "452-457")), _versions),
    Rule("core.instance-group", _CORE, "load",
         "KIND_GPU needs a GPU (KIND_AUTO becomes KIND_GPU on a GPU host, KIND_CPU elsewhere); KIND_CPU and "
         "KIND_MODEL name no GPUs.",
         "instance group <group> of model <name> has kind KIND_GPU but no GPUs are available",
         (Source(_CORE, _MCU, "1650-1710", checked="r26.06 (1726-1786)"), Source(_CORE, _MCU, "855-872")),
         _instance_groups),
    Rule("core.label-file", _CORE, "load",
         "An output's `label_filename` names a file in the model folder (its line count is never checked).",
         "failed to open text file for read <path>: <strerror>",
         (Source(_CORE, "src/model.cc", "111-119"), Source(_CORE, "src/label_provider.cc", "55-75")), _labels),
    Rule("core.warmup", _CORE, "load",
         "Warm-up samples are real requests: concrete dims that match the input's, its data type, a source, files "
         "with the bytes they need, batch ≤ `max_batch_size`; any error fails the model's load.",
         "failed to run warmup sample '<sample>': <error>",
         (Source(_CORE, _INSTANCE, "353-497"), Source(_CORE, _INSTANCE, "651-663", checked="r26.06 (670-682)"),
          Source(_CORE, "src/infer_request.cc", "1079-1152")), _warmup),
)
