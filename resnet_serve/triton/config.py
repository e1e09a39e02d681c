"""Triton's model configuration as small typed dataclasses that mirror `model_config.proto`.

Every dataclass validates itself on construction and renders through the real protobuf
(`model_config_pb2` + `text_format`), so a config that Triton would reject cannot be written.

Only the fields this toolkit writes are typed. Reading accepts every field Triton accepts: a
config read back keeps its parsed message, and rendering merges the typed fields onto a copy of
it, so whatever Model Analyzer or Model Navigator tuned (`optimization`, `sequence_batching`,
queue policies, rate limiters, ...) survives a read-modify-write untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError, first_line

__all__ = [
    "DATA_TYPES",
    "ENSEMBLE_PLATFORM",
    "INSTANCE_KINDS",
    "DynamicBatching",
    "EnsembleStep",
    "ExecutionAccelerator",
    "InstanceGroup",
    "ModelConfig",
    "ModelWarmup",
    "ResponseCache",
    "TensorConfig",
    "VersionPolicy",
    "WarmupInput",
    "parse_model_config",
]

DATA_TYPES: frozenset[str] = frozenset(
    name for name in model_config_pb2.DataType.keys() if name != "TYPE_INVALID"
)
INSTANCE_KINDS: frozenset[str] = frozenset(model_config_pb2.ModelInstanceGroup.Kind.keys())
_INPUT_FORMATS: frozenset[str] = frozenset(model_config_pb2.ModelInput.Format.keys())
ENSEMBLE_PLATFORM = "ensemble"


def _check_dims(owner: str, dims: Sequence[int]) -> None:
    for dim in dims:
        # -1 is Triton's "variable size"; every other dimension must be a real extent.
        if dim != -1 and dim <= 0:
            raise RepositoryError(f"{owner}: dims must be positive or -1, got {list(dims)}")


def _check_plain_file_name(owner: str, name: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise RepositoryError(f"{owner}: {name!r} must be a file name, not a path")


@dataclass(frozen=True)
class TensorConfig:
    """One model input or output (`ModelInput` / `ModelOutput`).

    `dims` exclude the batch dimension whenever the model's `max_batch_size` is above 0.
    `label_filename` names a file in the model folder that Triton's classification
    extension uses to label this output; it is only valid on outputs. `format` declares an
    image input's layout (FORMAT_NCHW or FORMAT_NHWC, which need 3 dims), as generic Triton
    image clients require; it is only valid on inputs.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    label_filename: str = ""
    format: str = "FORMAT_NONE"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if not self.name:
            raise RepositoryError("a model tensor needs a non-empty name")
        if self.data_type not in DATA_TYPES:
            raise RepositoryError(
                f"tensor {self.name!r}: unknown data_type {self.data_type!r} "
                f"(one of {', '.join(sorted(DATA_TYPES))})"
            )
        if not self.dims:
            raise RepositoryError(f"tensor {self.name!r}: dims must not be empty")
        _check_dims(f"tensor {self.name!r}", self.dims)
        if self.label_filename:
            _check_plain_file_name(f"tensor {self.name!r} label_filename", self.label_filename)
        if self.format not in _INPUT_FORMATS:
            raise RepositoryError(
                f"tensor {self.name!r}: unknown format {self.format!r} (one of {', '.join(sorted(_INPUT_FORMATS))})"
            )
        # Triton's own rule (model_config_utils.cc ValidateModelInput): an image layout has C, H and W.
        if self.format in ("FORMAT_NCHW", "FORMAT_NHWC") and len(self.dims) != 3:
            raise RepositoryError(f"tensor {self.name!r}: {self.format} needs 3 dims, got {list(self.dims)}")


@dataclass(frozen=True)
class DynamicBatching:
    """`ModelDynamicBatching`: let Triton merge concurrent requests into one batch."""

    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "preferred_batch_size", tuple(int(s) for s in self.preferred_batch_size)
        )
        if any(size <= 0 for size in self.preferred_batch_size):
            raise RepositoryError(
                f"preferred batch sizes must be positive, got {list(self.preferred_batch_size)}"
            )
        if self.max_queue_delay_microseconds < 0:
            raise RepositoryError(
                "max_queue_delay_microseconds must be >= 0, "
                f"got {self.max_queue_delay_microseconds}"
            )


@dataclass(frozen=True)
class InstanceGroup:
    """`ModelInstanceGroup`: how many copies of the model run, and on which device."""

    count: int = 1
    kind: str = "KIND_CPU"
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", tuple(int(g) for g in self.gpus))
        if self.count < 1:
            raise RepositoryError(f"an instance group needs count >= 1, got {self.count}")
        if self.kind not in INSTANCE_KINDS:
            raise RepositoryError(
                f"unknown instance kind {self.kind!r} (one of {', '.join(sorted(INSTANCE_KINDS))})"
            )
        if self.gpus and self.kind != "KIND_GPU":
            raise RepositoryError(f"gpus {list(self.gpus)} given for a {self.kind} instance group")
        if any(gpu < 0 for gpu in self.gpus):
            raise RepositoryError(f"GPU ids must be >= 0, got {list(self.gpus)}")


VersionPolicyKind = Literal["latest", "all", "specific"]
_VERSION_POLICY_KINDS: tuple[VersionPolicyKind, ...] = ("latest", "all", "specific")


@dataclass(frozen=True)
class VersionPolicy:
    """`ModelVersionPolicy`: serve the `latest` N versions, `all` of them, or `specific` ones."""

    kind: VersionPolicyKind
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", tuple(int(v) for v in self.versions))
        if self.kind not in _VERSION_POLICY_KINDS:
            raise RepositoryError(f"unknown version policy {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise RepositoryError("latest version policy needs num_versions >= 1")
        if self.kind == "specific" and not self.versions:
            raise RepositoryError("specific version policy needs at least one version")
        if self.kind != "specific" and self.versions:
            raise RepositoryError(f"versions {list(self.versions)} given to a {self.kind!r} policy")
        # Triton ignores version folders named 0 or with leading zeros.
        if any(v < 1 for v in self.versions):
            raise RepositoryError(f"model versions must be >= 1, got {list(self.versions)}")


WarmupSource = Literal["zero_data", "random_data", "input_data_file"]
_WARMUP_SOURCES: tuple[WarmupSource, ...] = ("zero_data", "random_data", "input_data_file")


@dataclass(frozen=True)
class WarmupInput:
    """`ModelWarmup.Input`: one input of a warm-up request.

    With `source="input_data_file"`, `input_data_file` names a file in the entry's `warmup/`
    folder holding the raw row-major sample (no batch dimension); for TYPE_STRING each element
    is a 4-byte length followed by its bytes.
    """

    data_type: str
    dims: tuple[int, ...]
    source: WarmupSource | None
    input_data_file: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if self.data_type not in DATA_TYPES:
            raise RepositoryError(f"warm-up input: unknown data_type {self.data_type!r}")
        _check_dims("warm-up input", self.dims)
        if self.source is not None and self.source not in _WARMUP_SOURCES:
            raise RepositoryError(
                f"warm-up input: source must be one of {', '.join(_WARMUP_SOURCES)}, got {self.source!r}"
            )
        if (self.source == "input_data_file") != bool(self.input_data_file):
            raise RepositoryError("warm-up input: input_data_file goes with source='input_data_file' only")
        if self.input_data_file:
            _check_plain_file_name("warm-up input_data_file", self.input_data_file)


@dataclass(frozen=True)
class ModelWarmup:
    """`ModelWarmup`: a request Triton sends to every instance before it reports the model ready."""

    name: str
    inputs: Mapping[str, WarmupInput]
    batch_size: int = 1
    count: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", dict(self.inputs))
        if not self.name:
            raise RepositoryError("a warm-up sample needs a name")
        if self.batch_size < 1:
            raise RepositoryError(f"warm-up {self.name!r}: batch_size must be >= 1, got {self.batch_size}")
        if self.count < 0:
            raise RepositoryError(f"warm-up {self.name!r}: count must be >= 0, got {self.count}")
        if not self.inputs:
            raise RepositoryError(f"warm-up {self.name!r}: needs its inputs")


@dataclass(frozen=True)
class ExecutionAccelerator:
    """`ModelOptimizationPolicy.ExecutionAccelerators.Accelerator`: an execution provider the
    onnxruntime backend puts before its default one, with the provider's own parameters."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", dict(self.parameters))
        if not self.name:
            raise RepositoryError("an execution accelerator needs a name")


@dataclass(frozen=True)
class ResponseCache:
    """`ModelResponseCache`. Written explicitly (off by default) so a reader sees the choice."""

    enable: bool = False


@dataclass(frozen=True)
class EnsembleStep:
    """`ModelEnsembling.Step`: one model of an ensemble and how its tensors connect.

    `input_map` maps the step model's input names to ensemble tensor names, `output_map` its
    output names to ensemble tensor names; version -1 is the latest one the model serves.
    """

    model_name: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]
    model_version: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_map", dict(self.input_map))
        object.__setattr__(self, "output_map", dict(self.output_map))
        if not self.model_name:
            raise RepositoryError("an ensemble step needs a model_name")
        if not self.input_map or not self.output_map:
            raise RepositoryError(f"ensemble step {self.model_name!r}: needs an input_map and an output_map")
        if self.model_version < -1 or self.model_version == 0:
            raise RepositoryError(
                f"ensemble step {self.model_name!r}: model_version must be -1 (latest) or >= 1, "
                f"got {self.model_version}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """`ModelConfig`: one model of a Triton model repository (the content of config.pbtxt).

    `parsed` is the message a config was read from (None for one built in code). It carries
    the fields not typed here; `render` merges the typed fields onto a copy of it.
    """

    name: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    backend: str = ""
    platform: str = ""
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None
    instance_groups: tuple[InstanceGroup, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str = ""
    version_policy: VersionPolicy | None = None
    model_warmup: tuple[ModelWarmup, ...] = ()
    response_cache: ResponseCache | None = None
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    gpu_accelerators: tuple[ExecutionAccelerator, ...] = ()
    parsed: model_config_pb2.ModelConfig | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("inputs", "outputs", "instance_groups", "model_warmup", "ensemble_steps", "gpu_accelerators"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "parameters", dict(self.parameters))
        owner = f"model {self.name!r}"
        if not self.name:
            raise RepositoryError("a model config needs a non-empty name")
        if not (self.backend or self.platform):
            raise RepositoryError(f"{owner}: set a backend or a platform")
        if self.max_batch_size < 0:
            raise RepositoryError(f"{owner}: max_batch_size must be >= 0, got {self.max_batch_size}")
        if not self.inputs or not self.outputs:
            raise RepositoryError(f"{owner}: needs at least one input and one output")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RepositoryError(f"{owner}: duplicate tensor names {duplicates}")
        labelled_inputs = [t.name for t in self.inputs if t.label_filename]
        if labelled_inputs:
            raise RepositoryError(
                f"{owner}: label_filename is only valid on outputs, not on inputs {labelled_inputs}"
            )
        formatted_outputs = [t.name for t in self.outputs if t.format != "FORMAT_NONE"]
        if formatted_outputs:
            raise RepositoryError(f"{owner}: format is only valid on inputs, not on outputs {formatted_outputs}")
        if self.dynamic_batching is not None:
            if self.max_batch_size == 0:
                raise RepositoryError(f"{owner}: dynamic batching needs max_batch_size > 0")
            too_big = [s for s in self.dynamic_batching.preferred_batch_size if s > self.max_batch_size]
            if too_big:
                raise RepositoryError(
                    f"{owner}: preferred batch sizes {too_big} exceed max_batch_size {self.max_batch_size}"
                )
        for key, value in self.parameters.items():
            if not key or not isinstance(key, str) or not isinstance(value, str):
                raise RepositoryError(
                    f"{owner}: parameters must map non-empty strings to strings, got {key!r}: {value!r}"
                )
        if self.default_model_filename:
            _check_plain_file_name(f"{owner} default_model_filename", self.default_model_filename)
        self._check_warmup(owner)
        self._check_ensemble(owner)

    def _check_warmup(self, owner: str) -> None:
        input_names = {t.name for t in self.inputs}
        for warmup in self.model_warmup:
            unknown = sorted(set(warmup.inputs) - input_names)
            if unknown:
                raise RepositoryError(f"{owner}: warm-up {warmup.name!r} feeds unknown inputs {unknown}")
            # Triton runs a warm-up sample as one request: it must fit the model's batching.
            limit = self.max_batch_size or 1
            if warmup.batch_size > limit:
                raise RepositoryError(
                    f"{owner}: warm-up {warmup.name!r} has batch_size {warmup.batch_size}, "
                    f"more than the model takes ({limit})"
                )

    def _check_ensemble(self, owner: str) -> None:
        is_ensemble = self.platform == ENSEMBLE_PLATFORM
        if is_ensemble != bool(self.ensemble_steps):
            raise RepositoryError(
                f"{owner}: ensemble steps go with platform {ENSEMBLE_PLATFORM!r}, and it needs them"
            )
        # Triton's own rules for ensembles (model_config_utils.cc): the steps' models own these.
        if is_ensemble and (self.instance_groups or self.model_warmup):
            raise RepositoryError(f"{owner}: an ensemble takes no instance_group and no model_warmup")

    def to_protobuf(self) -> model_config_pb2.ModelConfig:
        """This config as the message Triton itself parses, with the parsed message's untyped
        fields kept."""
        message = model_config_pb2.ModelConfig()
        if self.parsed is not None:
            message.CopyFrom(self.parsed)
        message.name = self.name
        message.backend = self.backend
        message.platform = self.platform
        message.max_batch_size = self.max_batch_size
        message.default_model_filename = self.default_model_filename
        _merge_tensors(message.input, self.inputs, model_config_pb2.ModelInput)
        _merge_tensors(message.output, self.outputs, model_config_pb2.ModelOutput)
        if self.dynamic_batching is None:
            message.ClearField("dynamic_batching")
        else:
            # SetInParent marks the field as set even when every value is a default: an empty
            # `dynamic_batching {}` still turns the dynamic batcher on. Queue policies and
            # priority levels a tuner set stay as they are.
            batching = message.dynamic_batching
            batching.SetInParent()
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.extend(self.dynamic_batching.preferred_batch_size)
            batching.max_queue_delay_microseconds = self.dynamic_batching.max_queue_delay_microseconds
        groups = [
            _merged(message.instance_group, index, model_config_pb2.ModelInstanceGroup)
            for index in range(len(self.instance_groups))
        ]
        for group, typed in zip(groups, self.instance_groups, strict=True):
            group.count = typed.count
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(typed.kind)
            del group.gpus[:]
            group.gpus.extend(typed.gpus)
        del message.instance_group[:]
        message.instance_group.extend(groups)
        message.parameters.clear()
        for key, value in self.parameters.items():
            message.parameters[key].string_value = value
        self._merge_policies(message)
        self._merge_ensemble(message)
        accelerators = message.optimization.execution_accelerators.gpu_execution_accelerator
        del accelerators[:]
        for accelerator in self.gpu_accelerators:
            accelerators.add(name=accelerator.name).parameters.update(accelerator.parameters)
        if not message.optimization.execution_accelerators.ListFields():
            message.optimization.ClearField("execution_accelerators")
        if not message.optimization.ListFields():
            message.ClearField("optimization")
        return message

    def _merge_policies(self, message: model_config_pb2.ModelConfig) -> None:
        message.ClearField("version_policy")
        if self.version_policy is not None:
            policy = self.version_policy
            if policy.kind == "latest":
                message.version_policy.latest.num_versions = policy.num_versions
            elif policy.kind == "all":
                message.version_policy.all.SetInParent()
            else:
                message.version_policy.specific.versions.extend(policy.versions)
        del message.model_warmup[:]
        for warmup in self.model_warmup:
            sample = message.model_warmup.add(name=warmup.name, batch_size=warmup.batch_size, count=warmup.count)
            for input_name, typed in warmup.inputs.items():
                value = sample.inputs[input_name]
                value.data_type = model_config_pb2.DataType.Value(typed.data_type)
                value.dims.extend(typed.dims)
                if typed.source == "input_data_file":
                    value.input_data_file = typed.input_data_file
                elif typed.source is not None:
                    setattr(value, typed.source, True)
        message.ClearField("response_cache")
        if self.response_cache is not None:
            message.response_cache.SetInParent()
            message.response_cache.enable = self.response_cache.enable

    def _merge_ensemble(self, message: model_config_pb2.ModelConfig) -> None:
        if not self.ensemble_steps:
            message.ClearField("ensemble_scheduling")
            return
        scheduling = message.ensemble_scheduling
        steps = [_merged(scheduling.step, i, model_config_pb2.ModelEnsembling.Step)
                 for i in range(len(self.ensemble_steps))]
        for step, typed in zip(steps, self.ensemble_steps, strict=True):
            step.model_name = typed.model_name
            step.model_version = typed.model_version
            step.input_map.clear()
            step.input_map.update(typed.input_map)
            step.output_map.clear()
            step.output_map.update(typed.output_map)
        del scheduling.step[:]
        scheduling.step.extend(steps)

    def render(self) -> str:
        """The config.pbtxt text."""
        return text_format.MessageToString(self.to_protobuf())

    @classmethod
    def from_protobuf(cls, message: model_config_pb2.ModelConfig) -> ModelConfig:
        """Read a parsed config; every field Triton accepts is accepted, the untyped ones kept."""
        dynamic_batching = None
        if message.HasField("dynamic_batching"):
            dynamic_batching = DynamicBatching(
                preferred_batch_size=tuple(message.dynamic_batching.preferred_batch_size),
                max_queue_delay_microseconds=message.dynamic_batching.max_queue_delay_microseconds,
            )
        version_policy = None
        choice = message.version_policy.WhichOneof("policy_choice")
        if choice is not None:
            version_policy = VersionPolicy(
                kind=_VERSION_POLICY_KINDS[_VERSION_POLICY_KINDS.index(choice)],
                num_versions=message.version_policy.latest.num_versions or 1,
                versions=tuple(message.version_policy.specific.versions),
            )
        copy = model_config_pb2.ModelConfig()
        copy.CopyFrom(message)
        return cls(
            name=message.name,
            backend=message.backend,
            platform=message.platform,
            max_batch_size=message.max_batch_size,
            inputs=tuple(_typed_tensor(t) for t in message.input),
            outputs=tuple(_typed_tensor(t) for t in message.output),
            dynamic_batching=dynamic_batching,
            instance_groups=tuple(
                InstanceGroup(
                    count=g.count,
                    kind=_enum_name(model_config_pb2.ModelInstanceGroup.Kind, g.kind, "instance group kind"),
                    gpus=tuple(g.gpus),
                )
                for g in message.instance_group
            ),
            parameters={key: value.string_value for key, value in message.parameters.items()},
            default_model_filename=message.default_model_filename,
            version_policy=version_policy,
            model_warmup=tuple(_typed_warmup(w) for w in message.model_warmup),
            response_cache=(
                ResponseCache(enable=message.response_cache.enable)
                if message.HasField("response_cache") else None
            ),
            ensemble_steps=tuple(
                EnsembleStep(
                    model_name=step.model_name,
                    model_version=step.model_version,
                    input_map=dict(step.input_map),
                    output_map=dict(step.output_map),
                )
                for step in message.ensemble_scheduling.step
            ),
            gpu_accelerators=tuple(
                ExecutionAccelerator(name=a.name, parameters=dict(a.parameters))
                for a in message.optimization.execution_accelerators.gpu_execution_accelerator
            ),
            parsed=copy,
        )

    @classmethod
    def parse(cls, text: str) -> ModelConfig:
        """Parse config.pbtxt text into a validated ModelConfig."""
        return cls.from_protobuf(parse_model_config(text))


def _merged(existing: Sequence[Message], index: int, kind: type[Message]) -> Message:
    """A copy of the parsed sub-message at `index` (keeping its untyped fields), or a new one."""
    fresh = kind()
    if index < len(existing):
        fresh.CopyFrom(existing[index])
    return fresh


def _merge_tensors(existing: Any, typed: Sequence[TensorConfig], kind: type[Message]) -> None:
    # Matched by name, so reshape, optional, format, ... of a parsed tensor stay with it.
    by_name = {tensor.name: tensor for tensor in existing}
    merged = []
    for tensor in typed:
        message = kind()
        if tensor.name in by_name:
            message.CopyFrom(by_name[tensor.name])
        message.name = tensor.name
        message.data_type = model_config_pb2.DataType.Value(tensor.data_type)
        del message.dims[:]
        message.dims.extend(tensor.dims)
        if isinstance(message, model_config_pb2.ModelOutput):
            message.label_filename = tensor.label_filename
        else:
            message.format = model_config_pb2.ModelInput.Format.Value(tensor.format)
        merged.append(message)
    del existing[:]
    existing.extend(merged)


def _typed_tensor(tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput) -> TensorConfig:
    return TensorConfig(
        name=tensor.name,
        data_type=_enum_name(model_config_pb2.DataType, tensor.data_type, f"tensor {tensor.name!r}: data_type"),
        dims=tuple(tensor.dims),
        label_filename=getattr(tensor, "label_filename", ""),
        format=_enum_name(model_config_pb2.ModelInput.Format, tensor.format, f"tensor {tensor.name!r}: format")
        if isinstance(tensor, model_config_pb2.ModelInput) else "FORMAT_NONE",
    )


def _typed_warmup(warmup: model_config_pb2.ModelWarmup) -> ModelWarmup:
    inputs = {}
    for name, value in warmup.inputs.items():
        source = value.WhichOneof("input_data_type")
        inputs[name] = WarmupInput(
            data_type=_enum_name(model_config_pb2.DataType, value.data_type, f"warm-up input {name!r}: data_type"),
            dims=tuple(value.dims),
            source=_WARMUP_SOURCES[_WARMUP_SOURCES.index(source)] if source else None,
            input_data_file=value.input_data_file,
        )
    return ModelWarmup(name=warmup.name, inputs=inputs, batch_size=warmup.batch_size, count=warmup.count)


def _enum_name(enum: Any, value: int, what: str) -> str:
    # The schema's enums are open (proto3): text can hold a number that names nothing.
    try:
        return enum.Name(value)
    except ValueError:
        raise RepositoryError(f"{what} {value} is not one Triton knows") from None


def parse_model_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with Triton's own schema; RepositoryError on invalid text."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    # protobuf checks integer ranges as it assigns, with ValueError rather than ParseError.
    except (text_format.ParseError, ValueError) as error:
        raise RepositoryError(f"invalid model config: {first_line(error)}") from None
