"""The served copy of a repository: proxies for onnxruntime/openvino entries, mirrors for the
rest, skipped entries with their reasons; built from real repository entries on disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from google.protobuf import text_format
from hostile import dead_pid
from openvino_entry import convert_to_openvino_entry
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from tritonclient.grpc import model_config_pb2

from resnet_serve.triton.config import parse_model_config
from resnet_serve.triton.proxy import (
    MODEL_FILE_PARAMETER,
    RUNTIME_PARAMETER,
    SkippedEntry,
    build_proxy_repository,
)
from resnet_serve.triton.serving import ONNXRUNTIME, PYTHON_ONNXRUNTIME, TENSORRT_PLAN

TUNED = """
optimization {
  graph { level: 1 }
  execution_accelerators { gpu_execution_accelerator { name: "tensorrt" } }
  input_pinned_memory { enable: true }
}
instance_group { count: 3 kind: KIND_CPU }
model_warmup {
  name: "zeros" batch_size: 1
  inputs { key: "input" value { data_type: TYPE_FP32 dims: [1, 28, 28] zero_data: true } }
}
version_policy { all {} }
response_cache { enable: false }
sequence_batching {}
"""


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_tiny_classifier(path)
    return path


def write(repository: Path, name: str, onnx_path: Path, **options: object) -> Path:
    write_entry(
        repository=repository, name=name, model_file=onnx_path, class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING, **options,  # type: ignore[arg-type]
    )
    return repository / name


def add_to_config(entry: Path, text: str) -> None:
    """Set the fields `text` sets, replacing what the writer put there."""
    config = parse_model_config((entry / "config.pbtxt").read_text())
    tuned = parse_model_config(text)
    for field, _ in tuned.ListFields():
        config.ClearField(field.name)
    config.MergeFrom(tuned)
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))


def write_ensemble(repository: Path, name: str, *, step: str) -> None:
    """An ensemble of one step that takes and gives what the tiny classifier does."""
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}" platform: "ensemble" max_batch_size: 8\n'
        'input { name: "input" data_type: TYPE_FP32 dims: [1, 28, 28] }\n'
        'output { name: "logits" data_type: TYPE_FP32 dims: [10] }\n'
        f'ensemble_scheduling {{ step {{ model_name: "{step}" model_version: -1 '
        'input_map { key: "input" value: "input" } output_map { key: "logits" value: "logits" } } }\n'
    )


def build(repository: Path, tmp_path: Path):
    destination = tmp_path / "served"
    destination.mkdir()
    return build_proxy_repository(source=repository, destination=destination)


def served_config(proxy, name: str) -> model_config_pb2.ModelConfig:
    return parse_model_config((proxy.path / name / "config.pbtxt").read_text())


def test_an_onnxruntime_entry_becomes_a_python_proxy_that_keeps_everything_it_serves_by(
    tmp_path: Path, onnx_path: Path
) -> None:
    entry = write(tmp_path / "repo", "tiny", onnx_path, target=ONNXRUNTIME, max_batch_size=16,
                  preferred_batch_sizes=[4, 8], max_queue_delay_us=500, threads=2)
    (entry / "2").mkdir()
    (entry / "2" / "model.onnx").write_bytes((entry / "1" / "model.onnx").read_bytes())
    add_to_config(entry, TUNED)
    original = parse_model_config((entry / "config.pbtxt").read_text())

    proxy = build(tmp_path / "repo", tmp_path)

    [served] = proxy.served
    assert (served.name, served.served_as, served.runtime, served.versions) == ("tiny", "proxy", "onnxruntime", (1, 2))
    config = served_config(proxy, "tiny")
    assert (config.backend, config.platform, config.default_model_filename) == ("python", "", "")
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "model_warmup",
                  "version_policy", "response_cache"):
        assert getattr(config, field) == getattr(original, field), field
    assert config.output[0].label_filename == "labels.txt"
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        **{k: v.string_value for k, v in original.parameters.items()},
        RUNTIME_PARAMETER: "onnxruntime", MODEL_FILE_PARAMETER: "model.onnx",
    }
    [group] = config.instance_group
    assert (group.count, group.kind, list(group.gpus)) == (3, model_config_pb2.ModelInstanceGroup.KIND_CPU, [])
    # onnxruntime's own graph level stays (the proxy reads it); what only the official
    # backend understands goes, each with a note.
    assert config.optimization == model_config_pb2.ModelOptimizationPolicy(
        graph=model_config_pb2.ModelOptimizationPolicy.Graph(level=1)
    )
    assert not config.HasField("sequence_batching")
    assert served.notes == (
        "dropped optimization.execution_accelerators, optimization.input_pinned_memory: "
        "only the official backend implements it",
        "dropped sequence_batching: only the official backend implements it",
    )
    for version in ("1", "2"):
        folder = proxy.path / "tiny" / version
        assert (folder / "model.onnx").resolve() == (entry / version / "model.onnx").resolve()
        assert (folder / "model.py").resolve().read_text().startswith('"""Triton python-backend model')
    assert (proxy.path / "tiny" / "labels.txt").read_text() == (entry / "labels.txt").read_text()


def test_an_openvino_entry_runs_its_ir_file_by_default(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path / "repo", "ov", onnx_path, target=ONNXRUNTIME)
    convert_to_openvino_entry(entry, parameters={"NUM_STREAMS": "2", "ENABLE_BATCH_PADDING": "YES"})
    add_to_config(entry, "optimization { graph { level: 1 } }")

    proxy = build(tmp_path / "repo", tmp_path)

    served = served_config(proxy, "ov")
    assert served.parameters[RUNTIME_PARAMETER].string_value == "openvino"
    assert served.parameters[MODEL_FILE_PARAMETER].string_value == "model.xml"
    assert served.parameters["NUM_STREAMS"].string_value == "2"
    assert not served.HasField("optimization")
    assert (proxy.path / "ov" / "1" / "model.bin").resolve() == (entry / "1" / "model.bin").resolve()
    # The proxy pads as the backend does (python_model/model.py); what that costs is noted.
    assert proxy.served[0].notes == (
        "dropped optimization.graph: only the official backend implements it",
        "ENABLE_BATCH_PADDING pads every execution to 64 images (the compute of 64 for any batch), and an "
        "execution of exactly 64 after a padded one fails its last requests (\"failed to split the output "
        "tensor\": the pad size is never reset) [openvino.batch-padding]",
    )


@pytest.mark.parametrize(
    ("instances", "parameters", "why"),
    [
        ("count: 2", {"NUM_STREAMS": "2"}, "NUM_STREAMS 2"),
        ("count: 2", {"PERFORMANCE_HINT": "THROUGHPUT"}, "PERFORMANCE_HINT THROUGHPUT"),
        ("count: 2", {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}, None),
        ("count: 2", {}, None),
        ("count: 1", {"NUM_STREAMS": "2"}, None),
        # Core gives an OpenVINO group without a count one instance.
        ("kind: KIND_CPU", {"NUM_STREAMS": "AUTO"}, None),
    ],
)
def test_openvino_instances_on_several_streams_are_noted_as_slower_here_than_in_the_official_backend(
    tmp_path: Path, onnx_path: Path, instances: str, parameters: dict[str, str], why: str | None
) -> None:
    entry = write(tmp_path / "repo", "ov", onnx_path, target=ONNXRUNTIME)
    add_to_config(entry, f"instance_group {{ {instances} }}")
    convert_to_openvino_entry(entry, parameters=parameters)

    notes = build(tmp_path / "repo", tmp_path).served[0].notes

    slower = [note for note in notes if "slower than the official container" in note]
    assert slower == ([] if why is None else [
        f"2 instances with more than one stream ({why}): the official backend runs them on one compiled model's "
        "streams side by side, this server compiles one per instance, which compete for the cores, so it measures "
        "this entry slower than the official container would serve it"])


def test_python_and_ensemble_entries_are_mirrored_file_by_file(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path / "repo", "py", onnx_path, target=PYTHON_ONNXRUNTIME)
    write_ensemble(tmp_path / "repo", "py-ensemble", step="py")

    proxy = build(tmp_path / "repo", tmp_path)

    assert [(e.name, e.served_as, e.runtime) for e in proxy.served] == [
        ("py", "mirror", "python"), ("py-ensemble", "mirror", "ensemble")
    ]
    for path in (entry / "config.pbtxt", entry / "labels.txt", entry / "1" / "model.py", entry / "1" / "model.onnx"):
        link = proxy.path / path.relative_to(tmp_path / "repo")
        assert link.is_symlink() and link.resolve() == path.resolve()
    # Real folders: whatever the server writes there (the python backend's __pycache__)
    # stays out of the user's repository.
    assert not (proxy.path / "py" / "1").is_symlink()


def test_entries_the_server_cannot_run_are_skipped_with_their_reason(tmp_path: Path, onnx_path: Path) -> None:
    repository = tmp_path / "repo"
    write(repository, "served", onnx_path, target=ONNXRUNTIME)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a real engine: skipped before anything reads it")
    plan.with_name("model.plan.json").write_text("{}")
    write(repository, "trt", plan, target=TENSORRT_PLAN)
    write_ensemble(repository, "trt-image", step="trt")
    write_ensemble(repository, "trt-image-twice", step="trt-image")
    (repository / "torch" / "1").mkdir(parents=True)
    (repository / "torch" / "config.pbtxt").write_text('name: "torch" platform: "pytorch_libtorch"\n')
    (repository / "no-config" / "1").mkdir(parents=True)
    (repository / ".served.staging-1234").mkdir()
    # What a killed and a running writer of "served" leave (write_model_entry names them so).
    dead, running = dead_pid(), os.getpid()
    (repository / f".served.staging-{dead}-k1ll3d").mkdir()
    (repository / f".served.old-{running}-w0rk1n").mkdir()

    proxy = build(repository, tmp_path)

    assert proxy.served_names == ("served",)
    assert proxy.skipped == tuple(sorted((
        SkippedEntry(f".served.old-{running}-w0rk1n", f"the replaced copy of 'served' of running export pid {running}"
                                                     ", which Triton would try to load as a model"),
        SkippedEntry(".served.staging-1234", "a hidden folder, which Triton would try to load as a model"),
        SkippedEntry(f".served.staging-{dead}-k1ll3d",
                     f"a stale staging folder of dead export pid {dead} (the next export of 'served' cleans it up)"
                     ", which Triton would try to load as a model"),
        SkippedEntry("no-config", "no config.pbtxt"),
        SkippedEntry("torch", "the embedded server cannot run 'pytorch' entries "
                              "(it runs python, ensemble, onnxruntime and openvino ones)", kind="not runnable"),
        SkippedEntry("trt", "a TensorRT plan needs Triton's tensorrt backend and the GPU it was built "
                            "for; the embedded server has neither (serve it in the official container)",
                     kind="not runnable"),
        # The official container loads them where it loads "trt": --strict does not refuse to serve them.
        SkippedEntry("trt-image", "ensemble 'trt-image' depends on 'trt' which is not valid", kind="not runnable"),
        SkippedEntry("trt-image-twice", "ensemble 'trt-image-twice' depends on 'trt-image' which is not valid",
                     kind="not runnable"),
    ), key=lambda skipped: skipped.name))
    assert sorted(p.name for p in proxy.path.iterdir()) == ["served"]


def test_an_entry_whose_config_does_not_parse_is_skipped_with_why_and_the_rest_served(
    tmp_path: Path, onnx_path: Path
) -> None:
    write(tmp_path / "repo", "good", onnx_path, target=ONNXRUNTIME)
    entry = write(tmp_path / "repo", "tiny", onnx_path, target=ONNXRUNTIME)
    (entry / "config.pbtxt").write_text("max_batch_size: lots\n")

    proxy = build(tmp_path / "repo", tmp_path)

    assert proxy.served_names == ("good",)
    ((name, reason),) = [(s.name, s.reason) for s in proxy.skipped]
    assert name == "tiny" and re.match(r"config.pbtxt: invalid model config: .*max_batch_size", reason)


def test_a_linked_version_folder_is_copied_as_a_real_folder_so_nothing_reaches_its_target(
    tmp_path: Path, onnx_path: Path
) -> None:
    entry = write(tmp_path / "repo", "tiny", onnx_path, target=ONNXRUNTIME)
    elsewhere = tmp_path / "elsewhere"
    (entry / "1").rename(elsewhere)
    (entry / "1").symlink_to(elsewhere)

    proxy = build(tmp_path / "repo", tmp_path)

    assert not (proxy.path / "tiny" / "1").is_symlink()
    assert (proxy.path / "tiny" / "1" / "model.py").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["model.onnx"]


def test_a_folder_that_links_back_into_itself_is_skipped_and_the_rest_served(tmp_path: Path, onnx_path: Path) -> None:
    entry = write(tmp_path / "repo", "tiny", onnx_path, target=ONNXRUNTIME)
    write(tmp_path / "repo", "other", onnx_path, target=ONNXRUNTIME)
    (entry / "1" / "loop").symlink_to(entry)

    proxy = build(tmp_path / "repo", tmp_path)

    assert proxy.served_names == ("other",)
    assert proxy.skipped == (SkippedEntry("tiny", "tiny/1/loop links back to a folder that contains it"),)
