"""Triton's model configuration as small typed dataclasses that mirror `model_config.proto`.

Every dataclass validates itself on construction and renders through the real protobuf
(`model_config_pb2` + `text_format`), so a config that Triton would reject cannot be written.
Only the fields this toolkit uses are modelled; reading a config that sets any other field
fails loudly instead of silently dropping it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError

__all__ = [
    "DATA_TYPES",
    "INSTANCE_KINDS",
    "ONNXRUNTIME",
    "PYTHON_ONNXRUNTIME",
    "SERVING_TARGETS",
    "TENSORRT_PLAN",
    "DynamicBatching",
    "InstanceGroup",
    "ModelConfig",
    "ServingTarget",
    "TensorConfig",
    "VersionPolicy",
    "get_serving_target",
    "parse_model_config",
]

DATA_TYPES: frozenset[str] = frozenset(
    name for name in model_config_pb2.DataType.keys() if name != "TYPE_INVALID"
)
INSTANCE_KINDS: frozenset[str] = frozenset(model_config_pb2.ModelInstanceGroup.Kind.keys())


def _check_dims(owner: str, dims: Sequence[int]) -> None:
    for dim in dims:
        # -1 is Triton's "variable size"; every other dimension must be a real extent.
        if dim != -1 and dim <= 0:
            raise RepositoryError(f"{owner}: dims must be positive or -1, got {list(dims)}")


def _reject_unmodelled(message: Message, modelled: set[str], owner: str) -> None:
    extra = sorted(f.name for f, _ in message.ListFields() if f.name not in modelled)
    if extra:
        raise RepositoryError(f"{owner}: config sets fields resnet-serve does not model: {extra}")


@dataclass(frozen=True)
class TensorConfig:
    """One model input or output (`ModelInput` / `ModelOutput`).

    `dims` exclude the batch dimension whenever the model's `max_batch_size` is above 0.
    `label_filename` names a file in the model folder that Triton's classification
    extension uses to label this output; it is only valid on outputs.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    label_filename: str = ""

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
        if "/" in self.label_filename or "\\" in self.label_filename:
            raise RepositoryError(
                f"tensor {self.name!r}: label_filename must be a file name in the model folder"
            )


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


@dataclass(frozen=True)
class VersionPolicy:
    """`ModelVersionPolicy`: serve the `latest` N versions, `all` of them, or `specific` ones."""

    kind: Literal["latest", "all", "specific"]
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", tuple(int(v) for v in self.versions))
        if self.kind not in ("latest", "all", "specific"):
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


@dataclass(frozen=True)
class ModelConfig:
    """`ModelConfig`: one model of a Triton model repository (the content of config.pbtxt)."""

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "instance_groups", tuple(self.instance_groups))
        object.__setattr__(self, "parameters", dict(self.parameters))
        if not self.name:
            raise RepositoryError("a model config needs a non-empty name")
        if not (self.backend or self.platform):
            raise RepositoryError(f"model {self.name!r}: set a backend or a platform")
        if self.max_batch_size < 0:
            raise RepositoryError(
                f"model {self.name!r}: max_batch_size must be >= 0, got {self.max_batch_size}"
            )
        if not self.inputs or not self.outputs:
            raise RepositoryError(f"model {self.name!r}: needs at least one input and one output")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RepositoryError(f"model {self.name!r}: duplicate tensor names {duplicates}")
        labelled_inputs = [t.name for t in self.inputs if t.label_filename]
        if labelled_inputs:
            raise RepositoryError(
                f"model {self.name!r}: label_filename is only valid on outputs, "
                f"not on inputs {labelled_inputs}"
            )
        if self.dynamic_batching is not None:
            if self.max_batch_size == 0:
                raise RepositoryError(
                    f"model {self.name!r}: dynamic batching needs max_batch_size > 0"
                )
            too_big = [s for s in self.dynamic_batching.preferred_batch_size
                       if s > self.max_batch_size]
            if too_big:
                raise RepositoryError(
                    f"model {self.name!r}: preferred batch sizes {too_big} exceed "
                    f"max_batch_size {self.max_batch_size}"
                )
        for key, value in self.parameters.items():
            if not key or not isinstance(key, str) or not isinstance(value, str):
                raise RepositoryError(
                    f"model {self.name!r}: parameters must map non-empty strings to strings, "
                    f"got {key!r}: {value!r}"
                )
        if "/" in self.default_model_filename or "\\" in self.default_model_filename:
            raise RepositoryError(
                f"model {self.name!r}: default_model_filename must be a plain file name"
            )

    def to_protobuf(self) -> model_config_pb2.ModelConfig:
        """This config as the message Triton itself parses."""
        message = model_config_pb2.ModelConfig(
            name=self.name,
            backend=self.backend,
            platform=self.platform,
            max_batch_size=self.max_batch_size,
            default_model_filename=self.default_model_filename,
        )
        for tensor in self.inputs:
            message.input.add(
                name=tensor.name,
                data_type=model_config_pb2.DataType.Value(tensor.data_type),
                dims=tensor.dims,
            )
        for tensor in self.outputs:
            message.output.add(
                name=tensor.name,
                data_type=model_config_pb2.DataType.Value(tensor.data_type),
                dims=tensor.dims,
                label_filename=tensor.label_filename,
            )
        if self.dynamic_batching is not None:
            # CopyFrom marks the field as set even when every value is a default: an empty
            # `dynamic_batching {}` still turns the dynamic batcher on.
            message.dynamic_batching.CopyFrom(
                model_config_pb2.ModelDynamicBatching(
                    preferred_batch_size=self.dynamic_batching.preferred_batch_size,
                    max_queue_delay_microseconds=self.dynamic_batching.max_queue_delay_microseconds,
                )
            )
        for group in self.instance_groups:
            message.instance_group.add(
                count=group.count,
                kind=model_config_pb2.ModelInstanceGroup.Kind.Value(group.kind),
                gpus=group.gpus,
            )
        for key, value in self.parameters.items():
            message.parameters[key].string_value = value
        if self.version_policy is not None:
            policy = self.version_policy
            if policy.kind == "latest":
                message.version_policy.latest.num_versions = policy.num_versions
            elif policy.kind == "all":
                message.version_policy.all.SetInParent()
            else:
                message.version_policy.specific.versions.extend(policy.versions)
        return message

    def render(self) -> str:
        """The config.pbtxt text."""
        return text_format.MessageToString(self.to_protobuf())

    @classmethod
    def from_protobuf(cls, message: model_config_pb2.ModelConfig) -> ModelConfig:
        """Read a parsed config back; fields this class does not model raise RepositoryError."""
        owner = f"model {message.name!r}"
        _reject_unmodelled(
            message,
            {"name", "backend", "platform", "max_batch_size", "input", "output",
             "dynamic_batching", "instance_group", "parameters", "default_model_filename",
             "version_policy"},
            owner,
        )
        for tensor in (*message.input, *message.output):
            _reject_unmodelled(
                tensor, {"name", "data_type", "dims", "label_filename"}, f"{owner} tensor"
            )
        dynamic_batching = None
        if message.HasField("dynamic_batching"):
            _reject_unmodelled(
                message.dynamic_batching,
                {"preferred_batch_size", "max_queue_delay_microseconds"},
                f"{owner} dynamic_batching",
            )
            dynamic_batching = DynamicBatching(
                preferred_batch_size=tuple(message.dynamic_batching.preferred_batch_size),
                max_queue_delay_microseconds=message.dynamic_batching.max_queue_delay_microseconds,
            )
        for group in message.instance_group:
            _reject_unmodelled(group, {"count", "kind", "gpus"}, f"{owner} instance_group")
        version_policy = None
        if message.HasField("version_policy"):
            choice = message.version_policy.WhichOneof("policy_choice")
            version_policy = VersionPolicy(
                kind=choice,  # type: ignore[arg-type]
                num_versions=message.version_policy.latest.num_versions or 1,
                versions=tuple(message.version_policy.specific.versions),
            )
        return cls(
            name=message.name,
            backend=message.backend,
            platform=message.platform,
            max_batch_size=message.max_batch_size,
            inputs=tuple(
                TensorConfig(
                    name=t.name,
                    data_type=model_config_pb2.DataType.Name(t.data_type),
                    dims=tuple(t.dims),
                )
                for t in message.input
            ),
            outputs=tuple(
                TensorConfig(
                    name=t.name,
                    data_type=model_config_pb2.DataType.Name(t.data_type),
                    dims=tuple(t.dims),
                    label_filename=t.label_filename,
                )
                for t in message.output
            ),
            dynamic_batching=dynamic_batching,
            instance_groups=tuple(
                InstanceGroup(
                    count=g.count,
                    kind=model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind),
                    gpus=tuple(g.gpus),
                )
                for g in message.instance_group
            ),
            parameters={key: value.string_value for key, value in message.parameters.items()},
            default_model_filename=message.default_model_filename,
            version_policy=version_policy,
        )

    @classmethod
    def parse(cls, text: str) -> ModelConfig:
        """Parse config.pbtxt text into a validated ModelConfig."""
        return cls.from_protobuf(parse_model_config(text))


def parse_model_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with Triton's own schema; RepositoryError on invalid text."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"invalid model config: {error}") from None


@dataclass(frozen=True)
class ServingTarget:
    """How a model is served: which Triton backend or platform runs which file.

    `model_filename` is the name the exported model gets inside the version folder, and also
    the config's `default_model_filename` when Triton loads it directly. `python_model` names a
    template in `resnet_serve/triton/python_model/` that is copied in as `model.py`, for targets
    where Triton's python backend runs the model file itself.
    """

    name: str
    backend: str
    platform: str
    model_filename: str
    instance_kind: str = "KIND_CPU"
    python_model: str = ""
    description: str = ""

    @property
    def copies_python_model(self) -> bool:
        return bool(self.python_model)


PYTHON_ONNXRUNTIME = ServingTarget(
    name="python-onnxruntime",
    backend="python",
    platform="",
    model_filename="model.onnx",
    python_model="model.py",
    description="Triton's python backend running the ONNX model in onnxruntime "
    "(works in the embedded tritonserver from the nvidia-pytriton wheel)",
)
ONNXRUNTIME = ServingTarget(
    name="onnxruntime",
    backend="onnxruntime",
    platform="onnxruntime_onnx",
    model_filename="model.onnx",
    # KIND_AUTO: on the GPU where the container has one (docker compose reserves one), on the
    # CPU otherwise, so one repository serves on both.
    instance_kind="KIND_AUTO",
    description="Triton's onnxruntime backend (the official tritonserver container images)",
)
TENSORRT_PLAN = ServingTarget(
    name="tensorrt-plan",
    backend="tensorrt",
    platform="tensorrt_plan",
    model_filename="model.plan",
    # An engine only runs on the GPU model it was built for.
    instance_kind="KIND_GPU",
    description="Triton's tensorrt backend running a serialized engine (official container "
    "images, on the GPU model and TensorRT version that built it)",
)
SERVING_TARGETS: dict[str, ServingTarget] = {
    target.name: target for target in (PYTHON_ONNXRUNTIME, ONNXRUNTIME, TENSORRT_PLAN)
}


def get_serving_target(name: str) -> ServingTarget:
    """Look a target up by its name; RepositoryError lists the known ones."""
    try:
        return SERVING_TARGETS[name]
    except KeyError:
        raise RepositoryError(
            f"unknown serving target {name!r} (one of {', '.join(SERVING_TARGETS)})"
        ) from None
