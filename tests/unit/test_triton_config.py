"""Typed Triton model config: validation, rendering through model_config_pb2, reading back."""

from __future__ import annotations

import dataclasses

import pytest
from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import RepositoryError
from resnet_serve.triton.config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    ResponseCache,
    TensorConfig,
    VersionPolicy,
    WarmupInput,
    parse_model_config,
)
from resnet_serve.triton.serving import (
    ONNXRUNTIME,
    OPENVINO,
    PYTHON_ONNXRUNTIME,
    SERVING_TARGETS,
    ServingTarget,
    get_serving_target,
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
        default_model_filename=target.default_model_filename,
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
    # The OpenVINO backend reads model.xml unless told otherwise; we serve the ONNX file.
    openvino_text = classifier_config(OPENVINO).render()
    assert 'backend: "openvino"' in openvino_text and 'default_model_filename: "model.onnx"' in openvino_text
    assert (ONNXRUNTIME.instance_kind, OPENVINO.instance_kind) == ("KIND_AUTO", "KIND_CPU")
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


def warmup(input_name: str = "input", batch_size: int = 1) -> ModelWarmup:
    return ModelWarmup(
        name="real",
        batch_size=batch_size,
        inputs={input_name: WarmupInput(data_type="TYPE_FP32", dims=[3, 224, 224], source="input_data_file",
                                        input_data_file="input_0")},
    )


def step(model: str) -> EnsembleStep:
    return EnsembleStep(model_name=model, input_map={"input": "input"}, output_map={"logits": "logits"})


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
        (lambda: classifier_config(model_warmup=[warmup("other")]), r"feeds unknown inputs \['other'\]"),
        (lambda: classifier_config(model_warmup=[warmup(batch_size=33)]), "more than the model takes"),
        (lambda: classifier_config(ensemble_steps=[step("a")]), "ensemble steps go with platform"),
        (lambda: classifier_config(backend="", platform="ensemble"), "ensemble steps go with platform"),
        (lambda: classifier_config(backend="", platform="ensemble", ensemble_steps=[step("a")]),
         "no instance_group"),
        (lambda: WarmupInput(data_type="TYPE_FP32", dims=[1], source="input_data_file"), "input_data_file goes"),
        (lambda: WarmupInput(data_type="TYPE_FP32", dims=[1], source="input_data_file", input_data_file="../x"),
         "must be a file name"),
        (lambda: ModelWarmup(name="w", inputs={}), "needs its inputs"),
        (lambda: EnsembleStep(model_name="a", input_map={}, output_map={"y": "y"}), "needs an input_map"),
        (lambda: EnsembleStep(model_name="a", input_map={"x": "x"}, output_map={"y": "y"}, model_version=0),
         "model_version must be"),
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


# What Model Analyzer writes for a tuned ONNX model: queue policies, rate limiter, TensorRT
# accelerator, pinned memory, metric tags, a transaction policy, and more that we do not type.
MODEL_ANALYZER_CONFIG = """
name: "resnet50_config_3"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
instance_group [ {
  count: 2 kind: KIND_GPU gpus: [ 0 ]
  rate_limiter { resources [ { name: "R1" count: 4 } ] priority: 2 }
} ]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 200
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100000 max_queue_size: 64 }
  priority_queue_policy { key: 1 value { max_queue_size: 8 } }
}
optimization {
  execution_accelerators { gpu_execution_accelerator: [ {
    name: "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
  } ] }
  input_pinned_memory { enable: true }
}
model_warmup [ { name: "zeros" batch_size: 4
  inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } } } ]
response_cache { enable: true }
version_policy { latest { num_versions: 2 } }
parameters { key: "intra_op_thread_count" value { string_value: "4" } }
model_transaction_policy { decoupled: false }
metric_tags { key: "team" value: "vision" }
"""

# Model Navigator / hand-written stateful and pipeline configs: sequence batching with control
# tensors, an ensemble whose step names a namespace, batch inputs.
SEQUENCE_CONFIG = """
name: "stateful"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "idx" data_type: TYPE_FP32 source_input: "x" } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ]
  oldest { max_candidate_sequences: 4 }
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
ENSEMBLE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "image" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
ensemble_scheduling { step [
  { model_name: "prep" model_version: -1 model_namespace: "vision"
    input_map { key: "image" value: "image" } output_map { key: "input" value: "t" } },
  { model_name: "net" model_version: 2 input_map { key: "input" value: "t" } output_map { key: "logits" value: "logits" } }
] }
"""


@pytest.mark.parametrize("text", [MODEL_ANALYZER_CONFIG, SEQUENCE_CONFIG, ENSEMBLE_CONFIG],
                         ids=["model-analyzer", "sequence", "ensemble"])
def test_reading_and_rendering_a_tuned_config_is_lossless(text: str) -> None:
    config = ModelConfig.parse(text)

    assert parse_model_config(config.render()) == parse_model_config(text)


def test_typed_fields_are_read_from_a_tuned_config() -> None:
    config = ModelConfig.parse(MODEL_ANALYZER_CONFIG)

    assert config.response_cache == ResponseCache(enable=True)
    assert config.version_policy == VersionPolicy(kind="latest", num_versions=2)
    assert config.model_warmup == (
        ModelWarmup(name="zeros", batch_size=4, inputs={
            "input": WarmupInput(data_type="TYPE_FP32", dims=(3, 224, 224), source="zero_data")}),
    )
    assert config.instance_groups == (InstanceGroup(count=2, kind="KIND_GPU", gpus=(0,)),)
    ensemble = ModelConfig.parse(ENSEMBLE_CONFIG)
    assert ensemble.ensemble_steps[1] == EnsembleStep(
        model_name="net", model_version=2, input_map={"input": "t"}, output_map={"logits": "logits"}
    )


def test_changing_typed_fields_keeps_what_a_tuner_set() -> None:
    tuned = ModelConfig.parse(MODEL_ANALYZER_CONFIG)

    changed = dataclasses.replace(
        tuned,
        max_batch_size=32,
        dynamic_batching=DynamicBatching(preferred_batch_size=[32], max_queue_delay_microseconds=50),
        instance_groups=[InstanceGroup(count=3, kind="KIND_GPU", gpus=[0])],
        response_cache=ResponseCache(enable=False),
    )
    message = parse_model_config(changed.render())

    assert message.max_batch_size == 32
    assert list(message.dynamic_batching.preferred_batch_size) == [32]
    assert message.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert message.dynamic_batching.priority_queue_policy[1].max_queue_size == 8
    assert message.instance_group[0].count == 3 and message.instance_group[0].rate_limiter.priority == 2
    assert message.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert message.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert message.HasField("response_cache") and not message.response_cache.enable
    assert message.metric_tags["team"] == "vision"


def test_warmup_cache_and_ensemble_written_in_code_read_back() -> None:
    config = classifier_config(model_warmup=[warmup()], response_cache=ResponseCache(enable=False))
    text = config.render()

    assert ModelConfig.parse(text) == config
    # "Explicitly off" means the field is present, not merely defaulted.
    assert parse_model_config(text).HasField("response_cache")
    assert 'input_data_file: "input_0"' in text
    ensemble = ModelConfig(
        name="tiny-image", platform="ensemble", max_batch_size=8,
        inputs=[TensorConfig(name="image", data_type="TYPE_STRING", dims=[1])],
        outputs=[TensorConfig(name="logits", data_type="TYPE_FP32", dims=[10], label_filename="labels.txt")],
        ensemble_steps=[EnsembleStep(model_name="tiny-preprocess", input_map={"image": "image"},
                                     output_map={"input": "t"}),
                        EnsembleStep(model_name="tiny", input_map={"input": "t"}, output_map={"logits": "logits"})],
    )
    assert ModelConfig.parse(ensemble.render()) == ensemble
