"""TensorRT export without TensorRT: every part that needs no GPU, and the clear refusal."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from samples import FASHION_PREPROCESSING
from tiny_onnx import write_entry
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.errors import ExportError, MissingDependencyError
from resnet_serve.export.tensorrt import (
    EngineOptions,
    EngineSidecar,
    OptimizationProfile,
    build_engine,
    calibration_batches,
    load_cache,
    save_cache,
    sidecar_path,
)
from resnet_serve.official_image import TRITON_CONTAINER_TAG
from resnet_serve.triton.config import DynamicBatching, InstanceGroup, ModelConfig, TensorConfig
from resnet_serve.triton.serving import SERVING_TARGETS, TENSORRT_PLAN

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
REPO_ROOT = Path(__file__).resolve().parents[2]
needs_no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="checks the refusal without TensorRT")


def _profile(**changes: object) -> OptimizationProfile:
    return OptimizationProfile(**{"min_batch": 1, "opt_batch": 8, "max_batch": 32,
                                  "input_shape": (3, 32, 32), **changes})


def test_profile_shapes_cover_min_opt_max():
    assert _profile().shapes() == ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    assert _profile(min_batch=4, opt_batch=4, max_batch=4).shapes()[0] == (4, 3, 32, 32)


@pytest.mark.parametrize(
    "changes",
    [{"min_batch": 0}, {"opt_batch": 64}, {"min_batch": 16}, {"input_shape": (3, 32)},
     {"input_shape": (3, 0, 32)}],
)
def test_profile_refuses_inconsistent_values(changes):
    with pytest.raises(ExportError):
        _profile(**changes)


def test_engine_options_default_to_the_served_batch():
    profile = EngineOptions().profile(input_shape=(1, 28, 28), max_batch_size=64)
    assert (profile.min_batch, profile.opt_batch, profile.max_batch) == (1, 64, 64)
    with pytest.raises(ExportError, match="below the served max_batch_size"):
        EngineOptions(max_batch=16).profile(input_shape=(1, 28, 28), max_batch_size=64)
    with pytest.raises(ExportError, match="workspace limit must be positive"):
        EngineOptions(workspace_bytes=0)


def test_calibration_batches_are_full_contiguous_float32():
    images = np.asfortranarray(np.random.default_rng(0).normal(size=(10, 1, 4, 4)))
    batches = list(calibration_batches(images, 4))
    assert len(batches) == 2  # the last 2 images are dropped, not padded
    for index, batch in enumerate(batches):
        assert batch.shape == (4, 1, 4, 4) and batch.dtype == np.float32
        assert batch.flags.c_contiguous
        np.testing.assert_allclose(batch, images[index * 4 : index * 4 + 4], rtol=1e-6)


def test_calibration_refuses_too_few_images_or_bad_shapes():
    with pytest.raises(ExportError, match="at least one batch of 8"):
        list(calibration_batches(np.zeros((7, 1, 4, 4), np.float32), 8))
    with pytest.raises(ExportError, match=r"\(N, C, H, W\)"):
        list(calibration_batches(np.zeros((8, 16), np.float32), 8))


@pytest.mark.parametrize("name", ["timing.cache", "calibration.cache"])
def test_cache_files_round_trip_atomically(tmp_path, name):
    path = tmp_path / "nested" / name
    assert load_cache(path) == b"" and load_cache(None) == b""
    save_cache(path, b"\x00cache\xff")
    save_cache(path, b"newer")
    assert load_cache(path) == b"newer"
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temporary left


def test_sidecar_round_trips_every_field(tmp_path):
    sidecar = EngineSidecar(
        tensorrt_version="10.5.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        precision="int8", profile=_profile(), triton_container_tag=TRITON_CONTAINER_TAG,
        onnx_sha256="ab" * 32, built_at="2026-01-01T00:00:00+00:00",
    )
    path = sidecar_path(tmp_path / "model.plan")
    assert path.name == "model.plan.json"
    sidecar.write(path)
    assert EngineSidecar.read(path) == sidecar
    assert json.loads(path.read_text())["profile"]["input_shape"] == [3, 32, 32]


def test_sidecar_read_refuses_missing_fields(tmp_path):
    path = tmp_path / "model.plan.json"
    path.write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(ExportError, match="cannot read engine sidecar"):
        EngineSidecar.read(path)
    with pytest.raises(ExportError, match="cannot read engine sidecar"):
        EngineSidecar.read(tmp_path / "absent.json")


@needs_no_tensorrt
def test_build_engine_without_tensorrt_is_one_clear_line(tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not read before TensorRT is found")
    plan = tmp_path / "out" / "model.plan"
    with pytest.raises(MissingDependencyError) as caught:
        build_engine(onnx_file, plan, precision="fp16", profile=_profile(),
                     timing_cache_path=tmp_path / "timing.cache")
    assert str(caught.value).startswith("TensorRT is not installed")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model.onnx"]


def test_build_engine_checks_arguments_first(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        build_engine(tmp_path / "absent.onnx", tmp_path / "m.plan", precision="fp16",
                     profile=_profile())
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ExportError, match="calibration images or an existing calibration cache"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", precision="int8",
                     profile=_profile(), calibration_cache_path=tmp_path / "absent.cache")


@needs_no_tensorrt
def test_cli_export_tensorrt_fails_before_writing(tmp_path):
    repository = tmp_path / "repository"
    result = CliRunner().invoke(
        app,
        ["export", str(tmp_path / "never-read.safetensors"), "--repository", str(repository),
         "--format", "tensorrt", "--precision", "int8"],
    )
    assert result.exit_code != 0
    output = result.output.strip()
    assert len(output.splitlines()) == 1 and "TensorRT is not installed" in output, output
    assert not repository.exists()


def test_tensorrt_plan_config_renders_and_parses_back():
    assert SERVING_TARGETS["tensorrt-plan"] is TENSORRT_PLAN
    config = ModelConfig(
        name="resnet50-trt",
        backend=TENSORRT_PLAN.backend,
        platform=TENSORRT_PLAN.platform,
        max_batch_size=64,
        inputs=(TensorConfig(name="input", data_type="TYPE_FP32", dims=(3, 224, 224)),),
        outputs=(TensorConfig(name="logits", data_type="TYPE_FP32", dims=(1000,),
                              label_filename="labels.txt"),),
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=100),
        instance_groups=(InstanceGroup(kind=TENSORRT_PLAN.instance_kind, gpus=(0,)),),
        default_model_filename=TENSORRT_PLAN.model_filename,
    )
    text = config.render()
    assert 'platform: "tensorrt_plan"' in text and "KIND_GPU" in text
    assert ModelConfig.parse(text) == config


def test_gpu_check_exits_with_one_line_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "needs an NVIDIA GPU" in done.stderr


def test_repository_entry_carries_a_plan_and_its_sidecar(tmp_path):
    from resnet_serve.errors import RepositoryError

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine")
    arguments = dict(
        repository=tmp_path / "repository", name="r20-trt", model_file=plan,
        class_names=[f"class_{i}" for i in range(10)], preprocessing=FASHION_PREPROCESSING, target=TENSORRT_PLAN,
    )
    with pytest.raises(RepositoryError, match="no sidecar"):
        write_entry(**arguments)
    EngineSidecar(
        tensorrt_version="10.5.0", gpu_name="NVIDIA H100", compute_capability="9.0",
        precision="fp16", profile=_profile(max_batch=64, input_shape=(1, 28, 28)),
        triton_container_tag=TRITON_CONTAINER_TAG, onnx_sha256="0" * 64, built_at="now",
    ).write(sidecar_path(plan))
    entry = write_entry(**arguments)
    assert entry.model_path.name == "model.plan"
    assert entry.model_path.read_bytes() == b"serialized engine"
    assert EngineSidecar.read(sidecar_path(entry.model_path)).precision == "fp16"
    assert entry.config.platform == "tensorrt_plan"
    assert entry.config.instance_groups[0].kind == "KIND_GPU"
