"""The export pipeline: options checked once, and an imported ImageNet ResNet-50 with a trained
net's magnitudes exported at the default options, verified on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from samples import photo_image_folder
from typer.testing import CliRunner

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING
from resnet_serve.cli import app
from resnet_serve.errors import ExportError, RepositoryError
from resnet_serve.export.tensorrt import EngineOptions
from resnet_serve.models import create_model
from resnet_serve.parity import DEFAULT_RTOL
from resnet_serve.pipeline import ExportOptions
from resnet_serve.samples import photo_crops, with_trained_magnitudes
from resnet_serve.triton.serving import ServingOptions

runner = CliRunner()


def test_export_options_resolve_their_defaults_once() -> None:
    onnx, tensorrt = ExportOptions(), ExportOptions(format="tensorrt")
    assert (onnx.precision, onnx.engine, onnx.serving_target.name) == ("fp32", None, "onnxruntime")
    assert (tensorrt.precision, tensorrt.engine, tensorrt.serving_target.name) == ("fp16", EngineOptions(), "tensorrt-plan")
    assert onnx.lower_precision_tolerance.rtol is None
    assert onnx.lower_precision_tolerance.min_top1_agreement == 0.99


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"precision": "int4"}, ExportError, "unknown ONNX precision 'int4'"),
        ({"format": "tflite"}, ExportError, "unknown export format 'tflite'"),
        ({"calibration_method": "kl"}, ExportError, "unknown calibration method 'kl'"),
        ({"serving": {"max_batch_size": 0}}, RepositoryError, "max_batch_size must be ≥ 1"),
        ({"serving": {"instance_kind": "tpu"}}, RepositoryError, "unknown instance kind 'tpu'"),
        ({"serving": {"version": 0}}, RepositoryError, "model versions start at 1"),
        ({"engine": EngineOptions()}, ExportError, "engine options apply only to the tensorrt format"),
        ({"serving": {"target": "tflite-serving"}}, RepositoryError, "unknown serving target 'tflite-serving'"),
        ({"serving": {"target": "tensorrt-plan"}}, ExportError, "export with the tensorrt format"),
    ],
)
def test_export_options_refuse_what_cannot_work(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        if "serving" in options:
            options = {**options, "serving": ServingOptions(**options["serving"])}
        ExportOptions(**options)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photo_image_folder(tmp_path_factory.mktemp("photos"), classes=3, per_class=4, size=256)


def test_an_imported_resnet50_exports_with_default_options(photos: Path, tmp_path: Path) -> None:
    """Bug B: with logits of a few tens, an absolute 1e-5/1e-4 refused this faithful export."""
    torch.manual_seed(0)
    calibration = torch.from_numpy(IMAGENET_PREPROCESSING.normalize(photo_crops(8, size=256)))
    model = with_trained_magnitudes(create_model("resnet50"), calibration, seed=0)
    torch.save(model.state_dict(), tmp_path / "resnet50.pth")
    checkpoint = tmp_path / "resnet50.safetensors"
    imported = runner.invoke(app, ["import", str(tmp_path / "resnet50.pth"), "--arch", "resnet50", "-o", str(checkpoint)])
    assert imported.exit_code == 0, imported.output

    exported = runner.invoke(app, [
        "export", str(checkpoint), "--data", str(photos), "--repository", str(tmp_path / "repo"),
        "--json", str(tmp_path / "report.json"),
    ])

    assert exported.exit_code == 0, exported.output
    report = json.loads((tmp_path / "report.json").read_text())
    fold, onnx = report["fold_parity"], report["onnx_parity"]
    assert onnx["n_images"] == 12 and [p["batch_size"] for p in onnx["per_batch"]] == [1, 12]
    assert 10 <= onnx["reference_max_abs"] <= 100  # logits of a few tens
    assert fold["max_abs_relative"] <= DEFAULT_RTOL and onnx["max_abs_relative"] <= DEFAULT_RTOL
    assert onnx["top1_agreement"] == 1.0
    assert (tmp_path / "repo" / "resnet50" / "1" / "model.onnx").is_file()
