"""The backend contract, rule by rule: each rule with a configuration the official backend (or
core) refuses, made by breaking a healthy exported repository the way users break theirs, and
shown refused by both the embedded server's proxy builder and `repo check`.

A load rule's entry is skipped by `serve` (the official container would not load it) and is a
`repo check` error; a request rule's entry is served (the proxy then fails requests as the
backend does: tests/integration/test_openvino_contract.py) and is a `repo check` problem.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import text_format
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, INPUT_SHAPE, PREPROCESSING, export_tiny_classifier, write_entry
from tritonclient.grpc import model_config_pb2

from resnet_serve.export.tensorrt import EngineSidecar, OptimizationProfile, sidecar_path
from resnet_serve.official_image import TRITON_CONTAINER_TAG
from resnet_serve.triton.contract import RULES, find_rule
from resnet_serve.triton.contract.document import contract_markdown
from resnet_serve.triton.images import find_image
from resnet_serve.triton.proxy import build_proxy_repository
from resnet_serve.triton.repository import check_repository, write_image_pipeline
from resnet_serve.triton.serving import GPU_ACCELERATORS, OPENVINO, PYTHON_ONNXRUNTIME, TENSORRT_PLAN

Config = model_config_pb2.ModelConfig
# The image deploy/ builds, with the TensorRT version its release notes do not record filled in and
# the runtimes the python-onnxruntime target imports installed, so that the image's own checks
# (tests/unit/test_repo_check.py) stay out of these.
TENSORRT = "10.13.3.9"
_DEPLOY = find_image("deploy")
IMAGE = dataclasses.replace(_DEPLOY, tensorrt_version=TENSORRT,
                            python_packages=_DEPLOY.python_packages | {"onnxruntime", "openvino"})
KIND = model_config_pb2.ModelInstanceGroup


def write(repository: Path, name: str, model: Path, **options: object) -> Path:
    return write_entry(repository=repository, name=name, model_file=model, class_names=CLASS_NAMES,
                             preprocessing=PREPROCESSING, warmup_images=None, **options).path  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One entry of each kind the exporter writes, every one loadable."""
    root = tmp_path_factory.mktemp("contract")
    onnx_path = root / "tiny.onnx"
    export_tiny_classifier(onnx_path)
    repository = root / "repository"
    write_entry(repository=repository, name="ort", model_file=onnx_path, class_names=CLASS_NAMES,
                      preprocessing=PREPROCESSING, warmup_images=fashion_mnist(2))
    write_image_pipeline(repository=repository, classifier="ort")
    write(repository, "ov", onnx_path, target=OPENVINO)
    write(repository, "py", onnx_path, target=PYTHON_ONNXRUNTIME)
    plan = root / "model.plan"
    plan.write_bytes(b"an engine")
    EngineSidecar(
        tensorrt_version=TENSORRT, gpu_name="NVIDIA H100",
        compute_capability="9.0", precision="fp16",
        profile=OptimizationProfile(input_shape=INPUT_SHAPE, min_batch=1, opt_batch=8, max_batch=64),
        triton_container_tag=TRITON_CONTAINER_TAG, onnx_sha256="0" * 64, built_at="now",
    ).write(sidecar_path(plan))
    write(repository, "trt", plan, target=TENSORRT_PLAN)
    return repository


def proxy_skips(repository: Path, destination: Path) -> dict[str, str]:
    """What the embedded server's proxy builder skips, and why."""
    destination.mkdir()
    return {s.name: s.reason for s in build_proxy_repository(source=repository, destination=destination).skipped}


def edit(entry: Path, change: Callable[[Config], None]) -> None:
    config = text_format.Parse((entry / "config.pbtxt").read_text(), Config())
    change(config)
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))


def parameter(key: str, value: str) -> Callable[[Config], None]:
    return lambda config: config.parameters[key].MergeFrom(model_config_pb2.ModelParameter(string_value=value))


def broken_nchw(config: Config) -> None:
    config.input[0].format = model_config_pb2.ModelInput.FORMAT_NCHW
    config.input[0].dims.append(1)


def nine_classes(config: Config) -> None:
    del config.output[0].dims[:]
    config.output[0].dims.append(9)


def steps_allow_less(config: Config) -> None:
    config.max_batch_size = 128


def kind(value: int) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        del config.instance_group[:]
        config.instance_group.add(count=1, kind=value)
    return change


def openvino_batch(size: int, *, padding: bool) -> Callable[[Path], None]:
    def change(repository: Path) -> None:
        def batch(config: Config) -> None:
            config.max_batch_size = size
            if padding:
                parameter("ENABLE_BATCH_PADDING", "YES")(config)
        edit(repository / "ov", batch)
    return change


def with_warmup(repository: Path) -> None:
    openvino_batch(4, padding=False)(repository)
    shutil.copytree(repository / "ort" / "warmup", repository / "ov" / "warmup")
    source = text_format.Parse((repository / "ort" / "config.pbtxt").read_text(), Config())
    edit(repository / "ov", lambda config: config.model_warmup.extend(source.model_warmup))


# rule → (the entry it breaks, how, a fragment of the line that names the problem)
BREAKS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "core.directory-name": ("ort", lambda r: edit(r / "ort", lambda c: setattr(c, "name", "other")),
                            "unexpected directory name 'ort' for model 'other'"),
    "core.backend": ("ort", lambda r: edit(r / "ort", lambda c: setattr(c, "platform", "tensorrt_plan")),
                     "unexpected 'platform' and 'backend' pair, got:tensorrt_plan, onnxruntime"),
    "core.batching": ("ort", lambda r: edit(r / "ort", lambda c: c.dynamic_batching.preferred_batch_size.append(128)),
                      "dynamic batching preferred size must be <= max batch size for ort"),
    "core.tensor-shape": ("ort", lambda r: edit(r / "ort", lambda c: c.input[0].dims.__setitem__(1, 0)),
                          "model input 'input' dimension must be integer >= 1, or -1"),
    "core.input-format": ("ort", lambda r: edit(r / "ort", broken_nchw), "model input NHWC/NCHW require 3 dims"),
    "core.versions": ("ort", lambda r: (r / "ort" / "1").rename(r / "ort" / "01"),
                      "at least one version must be available under the version policy of model 'ort'"),
    "core.instance-group": ("ort", lambda r: edit(r / "ort", lambda c: c.instance_group[0].gpus.append(0)),
                            "has kind KIND_CPU but specifies one or more GPUs"),
    "core.label-file": ("ort", lambda r: (r / "ort" / "labels.txt").unlink(), "failed to open text file for read"),
    "core.warmup": ("ort", lambda r: (r / "ort" / "warmup" / "input_0").write_bytes(b"\0" * 12),
                    "warmup setting expects 3136 bytes, but the data provided from input_0 only has 12 bytes"),
    "ensemble.fields": ("ort-image", lambda r: edit(r / "ort-image", lambda c: c.instance_group.add(count=1)),
                        "instance group should not be specified for ensemble 'ort-image'"),
    "ensemble.graph": ("ort-image", lambda r: edit(r / "ort-image", lambda c: setattr(c.output[0], "name", "scores")),
                       "ensemble output 'scores' for ensemble ort-image' is not used"),
    "ensemble.steps": ("ort-image", lambda r: edit(r / "ort-image", lambda c: setattr(
        c.ensemble_scheduling.step[1], "model_name", "missing")), "contains models that are not available"),
    "ensemble.step-models": ("ort-image", lambda r: edit(r / "ort-image", steps_allow_less),
                             "ensemble ort-image allows maximum batch size 128, but it contains model "
                             "ort-preprocess which only allows maximum batch size to be 64"),
    "onnxruntime.model-file": ("ort", lambda r: (r / "ort" / "1" / "model.onnx").unlink(), "unable to find"),
    "onnxruntime.tensors": ("ort", lambda r: edit(r / "ort", nine_classes),
                            "tensor 'logits': the model expects 2 dimensions (shape [-1,10])"),
    "onnxruntime.parameters": ("ort", lambda r: edit(r / "ort", parameter("execution_mode", "2")),
                               "Expected values for  execution_mode are 0 or 1 but got 2"),
    "onnxruntime.accelerators": ("ort", lambda r: edit(r / "ort", lambda c: c.optimization.execution_accelerators
                                                       .cpu_execution_accelerator.add(name="tensorrt")),
                                 "unknown Execution Accelerator 'tensorrt' is requested"),
    "openvino.instance-kind": ("ov", lambda r: edit(r / "ov", kind(KIND.KIND_MODEL)),
                               "Triton openVINO backend supports only CPU device"),
    "openvino.model-file": ("ov", lambda r: edit(r / "ov", lambda c: setattr(c, "default_model_filename", "x.onnx")),
                            "unable to find"),
    "openvino.tensors": ("ov", lambda r: edit(r / "ov", lambda c: setattr(c.input[0], "data_type",
                                                                          model_config_pb2.TYPE_FP64)),
                         "unsupported datatype TYPE_FP64 for input 'input'"),
    "openvino.parameters": ("ov", lambda r: edit(r / "ov", parameter("HINT_BF16", "true")),
                            "expected the parameter 'HINT_BF16' to be YES, got true"),
    "openvino.warmup-batch": ("ov", with_warmup, "expected requests with batch size '4', got '1'\" fails it"),
    "openvino.exact-batch": ("ov", openvino_batch(4, padding=False), "max_batch_size 4 without ENABLE_BATCH_PADDING"),
    "openvino.batch-padding": ("ov", openvino_batch(4, padding=True), "the pad size is never reset"),
    "tensorrt.instance-kind": ("trt", lambda r: edit(r / "trt", kind(KIND.KIND_CPU)),
                               "TensorRT backend supports only GPU device"),
    "tensorrt.model-file": ("trt", lambda r: (r / "trt" / "1" / "model.plan").unlink(), "unable to find"),
    "tensorrt.data-types": ("trt", lambda r: edit(r / "trt", lambda c: setattr(c.input[0], "data_type",
                                                                               model_config_pb2.TYPE_STRING)),
                            "unsupported datatype TYPE_STRING for input 'input'"),
    "python.model-file": ("py", lambda r: (r / "py" / "1" / "model.py").unlink(), "Python model file not found"),
    "python.parameters": ("py", lambda r: edit(r / "py", parameter("FORCE_CPU_ONLY_INPUT_TENSORS", "true")),
                          "Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: true'"),
}


def test_every_rule_has_a_configuration_it_refuses() -> None:
    assert sorted(BREAKS) == sorted(rule.id for rule in RULES)


def test_the_healthy_repository_breaks_no_rule(healthy: Path, tmp_path: Path) -> None:
    assert [str(p) for p in check_repository(repository=healthy, image=IMAGE)] == []
    # The embedded server cannot run a TensorRT plan; everything else is served.
    skipped = proxy_skips(healthy, tmp_path / "served")
    assert {name: reason.split(";")[0] for name, reason in skipped.items()} == {
        "trt": "a TensorRT plan needs Triton's tensorrt backend and the GPU it was built for"}


@pytest.mark.parametrize("rule_id", list(BREAKS))
def test_a_configuration_the_official_backend_refuses_is_refused_by_serve_and_repo_check(
    rule_id: str, healthy: Path, tmp_path: Path
) -> None:
    rule = find_rule(rule_id)
    entry, breaks, line = BREAKS[rule_id]
    repository = tmp_path / "repository"
    shutil.copytree(healthy, repository, symlinks=True)
    breaks(repository)

    problems = [p for p in check_repository(repository=repository, image=IMAGE) if p.rule == rule_id]
    proxied = proxy_skips(repository, tmp_path / "served").get(entry)

    assert {p.entry for p in problems} == {entry} and any(line in p.message for p in problems), problems
    assert {(p.severity, p.when) for p in problems} == {(rule.severity, rule.when)}
    if entry == "trt":
        # Never served here: the plan needs the official container and its GPU.
        assert proxied is not None and "TensorRT plan" in proxied
    elif rule.when == "load":
        # Refused exactly as the official container refuses it; the rest is served.
        assert proxied is not None, f"serve loads what {rule_id} refuses"
    else:
        # It loads in the official container: served, to fail requests as the backend does.
        assert proxied is None


def test_a_gpu_entry_loads_only_where_there_is_a_gpu(healthy: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(healthy, repository, symlinks=True)
    edit(repository / "ort", kind(KIND.KIND_GPU))

    def lines(host: str) -> list[str]:
        return [str(p) for p in check_repository(repository=repository, image=IMAGE, host=host) if p.entry == "ort"]

    assert lines("gpu") == lines("auto") == []  # auto: an entry that asks for KIND_GPU is meant for a GPU host
    assert lines("cpu") == ["ort: instance group of model ort has kind KIND_GPU but no GPUs are available (on a host "
                            "without a GPU) [core.instance-group]"]
    # The embedded server has no GPU: it refuses the entry as the official container without one does.
    assert proxy_skips(repository, tmp_path / "served")["ort"] == lines("cpu")[0].removeprefix("ort: ")


def test_the_gpu_accelerators_export_writes_pass_the_backends_parsing_on_a_gpu_host(
    healthy: Path, tmp_path: Path
) -> None:
    """onnxruntime.cc:420-753 parses gpu_execution_accelerator on GPU instances only: checked
    for a GPU host, what `export --gpu-accelerator` writes passes, and a typo would not."""
    repository = tmp_path / "repository"
    shutil.copytree(healthy, repository, symlinks=True)
    for name, accelerator in GPU_ACCELERATORS.items():
        shutil.rmtree(repository / "ort")
        write(repository, "ort", healthy.parent / "tiny.onnx", gpu_accelerator=name)
        config = text_format.Parse((repository / "ort" / "config.pbtxt").read_text(), Config())
        (written,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert (written.name, dict(written.parameters)) == (accelerator.name, accelerator.parameters)
        assert [str(p) for p in check_repository(repository=repository, image=IMAGE, host="gpu")
                if p.entry == "ort"] == []
    shutil.rmtree(repository / "ort")
    write(repository, "ort", healthy.parent / "tiny.onnx", gpu_accelerator="tensorrt-fp16")
    edit(repository / "ort", lambda c: c.optimization.execution_accelerators.gpu_execution_accelerator[0]
         .parameters.update({"precision_mode": "fp16", "trt_engine_cache": "1"}))
    on_gpu = [str(p) for p in check_repository(repository=repository, image=IMAGE, host="gpu") if p.entry == "ort"]
    assert on_gpu == [
        "ort: unsupported precision mode 'fp16' is requested (on a GPU instance) [onnxruntime.accelerators]",
        "ort: unknown parameter 'trt_engine_cache' is provided for TensorRT Execution Accelerator (on a GPU "
        "instance) [onnxruntime.accelerators]",
    ]
    # A host without a GPU never reads them (its instances are CPU ones).
    assert [str(p) for p in check_repository(repository=repository, image=IMAGE, host="cpu") if p.entry == "ort"] == []


def test_the_docs_page_is_the_rules() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "backend-contract.md"
    assert page.read_text() == contract_markdown(), "docs/backend-contract.md is out of date: run make docs-pages"
    for rule in RULES:
        assert f"| `{rule.id}` |" in page.read_text()
