"""The parsers of what other people's files say (a checkpoint's header, a model config, a
preprocessing definition), fuzzed: any input gives a value or our own one-line error, never
another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_serve.checkpoints import CheckpointMeta
from resnet_serve.errors import ResnetServeError
from resnet_serve.preprocessing import MAX_IMAGE_SIDE, Preprocessing
from resnet_serve.triton.config import (
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    ModelWarmup,
    TensorConfig,
    WarmupInput,
)

# Bounded so the whole module takes seconds; derandomized so a failure reproduces.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# What json.loads can return, sizes and numbers included that no honest file has.
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 3, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE + 1, 20_000, 10**400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)

VALID_PREPROCESSING = {"channels": 1, "height": 28, "width": 28, "mean": [0.286], "std": [0.353],
                       "interpolation": "bilinear"}
VALID_META = {
    "architecture": "resnet20", "num_classes": 2, "in_channels": 1, "class_names": ["a", "b"],
    "preprocessing": VALID_PREPROCESSING, "metrics": {"test_accuracy": 0.9}, "training": {}, "version": "0.1.0",
    "created": "2026-01-01T00:00:00+00:00",
}


def near(valid: dict[str, Any], keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid mapping with some fields replaced by anything JSON holds, some dropped, some added."""
    return st.builds(
        lambda replaced, dropped, added: {
            **{k: v for k, v in valid.items() if k not in dropped}, **replaced, **added
        },
        st.dictionaries(st.sampled_from(keys), json_values, max_size=3),
        st.sets(st.sampled_from(keys), max_size=2),
        st.dictionaries(st.text(max_size=8), json_values, max_size=1),
    )


def parses_or_refuses(parse, value: Any) -> Any:
    try:
        return parse(value)
    except ResnetServeError as error:
        assert "\n" not in str(error)
        return None


@FUZZ
@given(st.one_of(json_values, near(VALID_PREPROCESSING, [*VALID_PREPROCESSING, "resize"])))
def test_preprocessing_from_dict_gives_a_value_or_our_error(data: Any) -> None:
    preprocessing = parses_or_refuses(Preprocessing.from_dict, data)
    if preprocessing is not None:
        # What it accepts is bounded before anything is allocated from it, and round-trips.
        assert max(preprocessing.height, preprocessing.width, preprocessing.resize or 0) <= MAX_IMAGE_SIDE
        assert Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict()))) == preprocessing


@FUZZ
@given(st.one_of(
    json_values,
    near(VALID_META, list(VALID_META)),
    near(VALID_PREPROCESSING, list(VALID_PREPROCESSING)).map(lambda p: {**VALID_META, "preprocessing": p}),
))
def test_checkpoint_meta_from_dict_gives_a_value_or_our_error(data: Any) -> None:
    meta = parses_or_refuses(CheckpointMeta.from_dict, data)
    if meta is not None:
        assert type(meta.num_classes) is int and meta.num_classes == len(meta.class_names) >= 1
        assert CheckpointMeta.from_dict(json.loads(json.dumps(meta.to_dict()))).to_dict() == meta.to_dict()


def test_a_bool_is_not_a_count() -> None:
    with pytest.raises(ResnetServeError, match="invalid num_classes"):
        CheckpointMeta.from_dict({**VALID_META, "num_classes": True, "class_names": ["a"]})
    with pytest.raises(ResnetServeError, match="preprocessing height must be an integer, got True"):
        CheckpointMeta.from_dict({**VALID_META, "preprocessing": {**VALID_PREPROCESSING, "height": True}})


VALID_CONFIG = ModelConfig(
    name="m", platform="onnxruntime_onnx", max_batch_size=8,
    inputs=(TensorConfig(name="input", data_type="TYPE_FP32", dims=(1, 28, 28)),),
    outputs=(TensorConfig(name="logits", data_type="TYPE_FP32", dims=(10,), label_filename="labels.txt"),),
    dynamic_batching=DynamicBatching(preferred_batch_size=(4,), max_queue_delay_microseconds=100),
    instance_groups=(InstanceGroup(count=2, kind="KIND_AUTO"),),
    parameters={"preprocessing": json.dumps(VALID_PREPROCESSING)},
    model_warmup=(ModelWarmup(name="w", inputs={"input": WarmupInput(
        data_type="TYPE_FP32", dims=(1, 28, 28), source="input_data_file", input_data_file="input_0")}),),
).render()

# Field lines of config.pbtxt with values of every kind, right or wrong for the field.
_pbtxt_values = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.sampled_from(['"x"', '""', "TYPE_FP32", "TYPE_STRING", "KIND_GPU", "99", "-1", "true", "1e400", "{ }"]),
)
_pbtxt_fields = st.sampled_from([
    "name", "platform", "backend", "max_batch_size", "default_model_filename",
    "input { name: \"input\" data_type: %s dims: [ %s ] }",
    "output { name: \"logits\" data_type: TYPE_FP32 dims: [ %s ] label_filename: %s }",
    "instance_group { count: %s kind: %s }", "dynamic_batching { preferred_batch_size: [ %s ] }",
    "version_policy { specific { versions: %s } }", "version_policy { latest { num_versions: %s } }",
    "model_warmup { name: %s batch_size: %s inputs { key: \"input\" value { data_type: TYPE_FP32 dims: %s zero_data: true } } }",
    "parameters { key: %s value { string_value: %s } }",
    "ensemble_scheduling { step { model_name: %s model_version: %s } }",
])


@st.composite
def pbtxt_lines(draw: st.DrawFn) -> str:
    field = draw(_pbtxt_fields)
    if "%s" not in field:
        return f"{field}: {draw(_pbtxt_values)}"
    return field % tuple(draw(_pbtxt_values) for _ in range(field.count("%s")))


@st.composite
def mutated_config(draw: st.DrawFn) -> str:
    text = VALID_CONFIG
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 40)))
        text = text[:start] + draw(st.text(max_size=10)) + text[end:]
    return text


# protobuf's unescaping warns about the invalid escapes random text is full of.
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")
@FUZZ
@given(st.one_of(
    st.text(max_size=200),
    st.lists(pbtxt_lines(), max_size=8).map("\n".join),
    st.lists(pbtxt_lines(), max_size=4).map(lambda lines: VALID_CONFIG + "\n".join(lines)),
    mutated_config(),
))
def test_model_config_parse_gives_a_value_or_our_error(text: str) -> None:
    config = parses_or_refuses(ModelConfig.parse, text)
    if config is not None:
        assert ModelConfig.parse(config.render()) == config
