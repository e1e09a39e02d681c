"""Typed Triton model config: validation, rendering through model_config_pb2, reading back."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import (
    ONNXRUNTIME,
    PYTHON_ONNXRUNTIME,
    SERVING_TARGETS,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    ServingTarget,
    TensorConfig,
    VersionPolicy,
    get_serving_target,
    parse_model_config,
)


def classifier_config(
    target: ServingTarget = PYTHON_ONNXRUNTIME, **overrides: object
) -> ModelConfig:
    fields: dict[str, object] = dict(
        name="resnet18",
        backend=target.backend,
        platform=target.platform,
        max_batch_size=32,
        inputs=[TensorConfig(name="input", data_type="TYPE_FP32", dims=[3, 224, 224])],
        outputs=[
            TensorConfig(
                name="logits", data_type="TYPE_FP32", dims=[1000], label_filename="labels.txt"
            )
        ],
        dynamic_batching=DynamicBatching(
            preferred_batch_size=[8, 16], max_queue_delay_microseconds=500
        ),
        instance_groups=[InstanceGroup(count=2, kind=target.instance_kind)],
        parameters={"preprocessing": '{"mean": [0.485, 0.456, 0.406]}', "architecture": "r18"},
        default_model_filename="" if target.copies_python_model else target.model_filename,
    )
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", list(SERVING_TARGETS.values()), ids=list(SERVING_TARGETS))
def test_rendered_config_reads_back_with_the_same_fields(target: ServingTarget) -> None:
    config = classifier_config(target)
    text = config.render()

    assert ModelConfig.parse(text) == config
    message = parse_model_config(text)
    assert message.name == "resnet18"
    assert message.backend == target.backend
    assert message.platform == target.platform
    assert message.max_batch_size == 32
    assert list(message.input[0].dims) == [3, 224, 224]
    assert message.input[0].data_type == model_config_pb2.TYPE_FP32
    assert message.output[0].label_filename == "labels.txt"
    assert list(message.dynamic_batching.preferred_batch_size) == [8, 16]
    assert message.dynamic_batching.max_queue_delay_microseconds == 500
    assert message.instance_group[0].count == 2
    assert message.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.Kind.Value(target.instance_kind)
    assert message.parameters["architecture"].string_value == "r18"


def test_targets_describe_how_the_model_is_served() -> None:
    assert PYTHON_ONNXRUNTIME.backend == "python" and PYTHON_ONNXRUNTIME.copies_python_model
    assert PYTHON_ONNXRUNTIME.model_filename == "model.onnx"
    assert ONNXRUNTIME.platform == "onnxruntime_onnx" and not ONNXRUNTIME.copies_python_model
    onnx_text = classifier_config(ONNXRUNTIME).render()
    assert 'platform: "onnxruntime_onnx"' in onnx_text
    assert 'default_model_filename: "model.onnx"' in onnx_text
    assert get_serving_target("onnxruntime") is ONNXRUNTIME
    with pytest.raises(RepositoryError, match="unknown serving target 'tensorrt'"):
        get_serving_target("tensorrt")


def test_empty_dynamic_batching_still_turns_the_batcher_on() -> None:
    text = classifier_config(dynamic_batching=DynamicBatching()).render()

    assert parse_model_config(text).HasField("dynamic_batching")
    assert ModelConfig.parse(text).dynamic_batching == DynamicBatching()


@pytest.mark.parametrize(
    "policy",
    [
        VersionPolicy(kind="latest", num_versions=2),
        VersionPolicy(kind="all"),
        VersionPolicy(kind="specific", versions=[1, 3]),
    ],
)
def test_version_policies_read_back(policy: VersionPolicy) -> None:
    config = classifier_config(version_policy=policy)

    assert ModelConfig.parse(config.render()).version_policy == policy


def test_variable_dims_and_gpu_groups_are_valid() -> None:
    config = classifier_config(
        inputs=[TensorConfig(name="input", data_type="TYPE_FP16", dims=[3, -1, -1])],
        instance_groups=[InstanceGroup(count=1, kind="KIND_GPU", gpus=[0, 1])],
    )

    assert ModelConfig.parse(config.render()) == config


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: classifier_config(name=""), "non-empty name"),
        (lambda: classifier_config(backend="", platform=""), "set a backend or a platform"),
        (lambda: classifier_config(max_batch_size=-1), "max_batch_size must be >= 0"),
        (lambda: classifier_config(max_batch_size=4), r"preferred batch sizes \[8, 16\] exceed"),
        (lambda: classifier_config(max_batch_size=0), "dynamic batching needs max_batch_size"),
        (lambda: classifier_config(inputs=[]), "at least one input and one output"),
        (lambda: TensorConfig(name="", data_type="TYPE_FP32", dims=[1]), "non-empty name"),
        (lambda: TensorConfig(name="x", data_type="FP32", dims=[1]), "unknown data_type 'FP32'"),
        (lambda: TensorConfig(name="x", data_type="TYPE_FP32", dims=[3, 0]), "positive or -1"),
        (lambda: TensorConfig(name="x", data_type="TYPE_FP32", dims=[-2]), "positive or -1"),
        (lambda: TensorConfig(name="x", data_type="TYPE_FP32", dims=[]), "must not be empty"),
        (lambda: DynamicBatching(preferred_batch_size=[0]), "must be positive"),
        (lambda: DynamicBatching(max_queue_delay_microseconds=-1), "must be >= 0"),
        (lambda: InstanceGroup(count=0), "count >= 1"),
        (lambda: InstanceGroup(kind="KIND_TPU"), "unknown instance kind"),
        (lambda: InstanceGroup(kind="KIND_CPU", gpus=[0]), "gpus"),
        (lambda: VersionPolicy(kind="specific"), "at least one version"),
        (lambda: VersionPolicy(kind="specific", versions=[0]), "must be >= 1"),
        (
            lambda: classifier_config(
                outputs=[TensorConfig(name="input", data_type="TYPE_FP32", dims=[10])]
            ),
            "duplicate tensor names",
        ),
        (
            lambda: classifier_config(
                inputs=[TensorConfig(name="i", data_type="TYPE_FP32", dims=[1], label_filename="l")]
            ),
            "only valid on outputs",
        ),
        (lambda: classifier_config(parameters={"k": 1}), "parameters must map"),
    ],
)
def test_invalid_configs_are_refused_on_construction(make: object, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        make()  # type: ignore[operator]


def test_invalid_text_is_one_readable_error() -> None:
    with pytest.raises(RepositoryError, match="invalid model config"):
        parse_model_config('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(RepositoryError, match="invalid model config"):
        parse_model_config("no_such_field: 1\n")


def test_fields_that_are_not_modelled_are_not_dropped_silently() -> None:
    text = classifier_config().render() + 'model_warmup {\n  name: "w"\n}\n'

    with pytest.raises(RepositoryError, match=r"does not model: \['model_warmup'\]"):
        ModelConfig.parse(text)
