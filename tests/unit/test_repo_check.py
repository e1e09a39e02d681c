"""`repo check`: would each entry load in a given Triton image? One test per kind of problem,
on repositories written by the real writer (and then broken the way users break them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tiny_onnx import CLASS_NAMES, INPUT_SHAPE, PREPROCESSING, export_tiny_classifier, write_entry
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.export.tensorrt import EngineSidecar, OptimizationProfile, sidecar_path
from resnet_serve.official_image import TRITON_CONTAINER_TAG
from resnet_serve.triton.images import find_image
from resnet_serve.triton.repository import check_repository, read_model_entry, write_image_pipeline
from resnet_serve.triton.serving import (
    ONNXRUNTIME,
    OPENVINO,
    PYTHON_ONNXRUNTIME,
    TENSORRT_PLAN,
    ServingTarget,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_tiny_classifier(path)
    return path


def write(repository: Path, model_file: Path, *, name: str = "tiny", target: ServingTarget = ONNXRUNTIME) -> Path:
    return write_entry(
        repository=repository, name=name, model_file=model_file, class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING, target=target,
    ).path


def check(repository: Path, image: str = "deploy") -> list[str]:
    return [str(problem) for problem in check_repository(repository=repository, image=find_image(image))]


def run_check(repository: Path, *image: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["repo", "check", "--repository", str(repository), *image])
    return result.exit_code, result.output.strip().splitlines()


def test_an_exported_repository_with_its_image_pipeline_loads_in_the_deploy_image(tmp_path: Path, onnx_path: Path):
    write(tmp_path, onnx_path)
    write(tmp_path, onnx_path, name="tiny-ov", target=OPENVINO)
    write_image_pipeline(repository=tmp_path, classifier="tiny")

    code, lines = run_check(tmp_path)

    assert code == 0, lines
    assert lines == [f"✓ every entry of {tmp_path} would load in deploy/Dockerfile "
                     f"(nvcr.io/nvidia/tritonserver:{TRITON_CONTAINER_TAG} + Pillow)"]


def test_a_missing_backend(tmp_path: Path) -> None:
    folder = tmp_path / "tf-model"
    (folder / "1" / "model.savedmodel").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(
        'name: "tf-model" platform: "tensorflow_savedmodel" max_batch_size: 8\n'
        'input { name: "x" data_type: TYPE_FP32 dims: 4 } output { name: "y" data_type: TYPE_FP32 dims: 2 }\n'
    )

    # The tensorflow backend ships up to 25.02 and left the images at 25.03.
    assert check(tmp_path, "25.02-py3") == []
    assert check(tmp_path, "25.03-py3") == [
        "tf-model: backend 'tensorflow' is not in nvcr.io/nvidia/tritonserver:25.03-py3"
    ]


def test_a_python_import_missing_in_the_image(tmp_path: Path, onnx_path: Path) -> None:
    write(tmp_path, onnx_path, target=PYTHON_ONNXRUNTIME)
    write_image_pipeline(repository=tmp_path, classifier="tiny")

    code, lines = run_check(tmp_path, "--image", TRITON_CONTAINER_TAG)

    official = f"the python backend of nvcr.io/nvidia/tritonserver:{TRITON_CONTAINER_TAG} does not have"
    assert code == 1
    assert lines == [
        f"tiny: 1/model.py imports onnxruntime, which {official}",
        f"tiny: 1/model.py imports openvino, which {official}",
        # Core refuses an ensemble with a step it refused.
        "tiny-image: ensemble 'tiny-image' depends on 'tiny-preprocess' which is not valid",
        f"tiny-preprocess: 1/resnet_serve/preprocessing.py imports PIL, which {official}",
    ]
    # deploy/Dockerfile adds Pillow, not onnxruntime.
    assert [line.split(",")[0] for line in check(tmp_path)] == [
        "tiny: 1/model.py imports onnxruntime", "tiny: 1/model.py imports openvino",
        "tiny-image: ensemble 'tiny-image' depends on 'tiny' which is not valid",
    ]


def test_a_dims_mismatch_between_model_file_and_config(tmp_path: Path, onnx_path: Path) -> None:
    folder = write(tmp_path, onnx_path)
    config = read_model_entry(repository=tmp_path, name="tiny").config
    wrong = dataclasses.replace(config, inputs=(dataclasses.replace(config.inputs[0], dims=(1, 32, 32)),))
    (folder / "config.pbtxt").write_text(wrong.render())

    assert check(tmp_path) == [
        "tiny: version 1: model 'tiny', tensor 'input': the model expects 4 dimensions (shape [-1,1,28,28]) but the "
        "model configuration specifies 4 dimensions (an initial batch dimension because max_batch_size > 0 followed "
        "by the explicit tensor shape, making complete shape [-1,1,32,32]) [onnxruntime.tensors]"
    ]


def test_a_label_count_mismatch(tmp_path: Path, onnx_path: Path) -> None:
    folder = write(tmp_path, onnx_path)
    (folder / "labels.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES[:9]))

    # Triton never counts labels: the entry loads, and answers with a class left unlabelled.
    assert check(tmp_path) == ["tiny: warning: labels.txt has 9 class names, output 'logits' has 10 classes"]
    code, lines = run_check(tmp_path)
    assert code == 0 and lines[0] == "tiny: warning: labels.txt has 9 class names, output 'logits' has 10 classes"


def write_plan(repository: Path, tmp_path: Path, *, tensorrt_version: str, compute_capability: str) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine")
    EngineSidecar(
        tensorrt_version=tensorrt_version, gpu_name="NVIDIA GPU", compute_capability=compute_capability,
        precision="fp16", profile=OptimizationProfile(input_shape=INPUT_SHAPE, min_batch=1, opt_batch=8, max_batch=64),
        triton_container_tag=TRITON_CONTAINER_TAG, onnx_sha256="0" * 64, built_at="now",
    ).write(sidecar_path(plan))
    write(repository, plan, name="tiny-trt", target=TENSORRT_PLAN)


def test_a_tensorrt_version_mismatch(tmp_path: Path) -> None:
    # 24.10-py3 ships TensorRT 10.5.0.18 (its release notes); a plan loads only in the TensorRT that built it.
    image = find_image("24.10-py3")
    assert image.tensorrt_version == "10.5.0.18"
    # pip's TensorRT wheels before 10.8 report three parts; the build number then goes unchecked.
    for version in ("10.5.0.18", "10.5.0", "10.3.0.26", "10.5.0.17"):
        write_plan(tmp_path / version, tmp_path, tensorrt_version=version, compute_capability="9.0")

    assert check(tmp_path / "10.5.0.18", "24.10-py3") == []
    assert check(tmp_path / "10.5.0", "24.10-py3") == []
    assert check(tmp_path / "10.5.0.17", "24.10-py3") == [
        "tiny-trt: version 1: model.plan was built with TensorRT 10.5.0.17, "
        "nvcr.io/nvidia/tritonserver:24.10-py3 has 10.5.0.18: rebuild it there"
    ]
    assert check(tmp_path / "10.3.0.26", "24.10-py3") == [
        "tiny-trt: version 1: model.plan was built with TensorRT 10.3.0.26, "
        "nvcr.io/nvidia/tritonserver:24.10-py3 has 10.5.0.18: rebuild it there"
    ]
    # Where the image's TensorRT version is not recorded, the plan cannot be confirmed.
    unrecorded = dataclasses.replace(image, tensorrt_version=None)
    (problem,) = (str(p) for p in check_repository(repository=tmp_path / "10.5.0.18", image=unrecorded))
    assert "built with TensorRT 10.5.0.18" in problem and "cannot be confirmed" in problem


def test_a_plan_for_a_gpu_the_image_no_longer_supports(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_plan(repository, tmp_path, tensorrt_version="10.11.0.33", compute_capability="6.1")
    image = dataclasses.replace(find_image("25.06-py3"), tensorrt_version="10.11.0.33")

    assert [str(p) for p in check_repository(repository=repository, image=image)] == [
        "tiny-trt: version 1: model.plan was built for a GPU of compute capability 6.1 (NVIDIA GPU); "
        "nvcr.io/nvidia/tritonserver:25.06-py3 supports 7.5 and later"
    ]


def test_an_ensemble_step_naming_a_missing_entry_and_folders_triton_cannot_load(
    tmp_path: Path, onnx_path: Path
) -> None:
    write(tmp_path, onnx_path)
    write_image_pipeline(repository=tmp_path, classifier="tiny")
    for path in (tmp_path / "tiny").rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted((tmp_path / "tiny").rglob("*"), reverse=True):
        path.rmdir()
    (tmp_path / "tiny").rmdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "notes").mkdir()

    code, lines = run_check(tmp_path)

    assert code == 1
    assert lines == [
        ".ipynb_checkpoints: a hidden folder, which Triton would try to load as a model",
        "notes: no config.pbtxt",
        "tiny-image: ensemble tiny-image contains models that are not available or ambiguous: tiny [ensemble.steps]",
    ]
