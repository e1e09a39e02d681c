"""Photos in, served answers out: a torchvision-format ResNet-18 state dict is `import`ed,
fine-tuned with `train --init` on an ImageFolder of JPEG photos of mixed sizes, exported,
served by the real embedded tritonserver and evaluated on the val split. The served top-1
equals the in-process top-1 on every image (and the accuracy training measured), and the
`-image` ensemble gives the same classes from the JPEG bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from samples import PHOTO_FOLDER_CLASSES, write_photo_folder
from typer.testing import CliRunner

from resnet_serve.checkpoints import IMAGENET_PREPROCESSING, load_checkpoint
from resnet_serve.cli import app
from resnet_serve.client.classify import classify_files_server_side
from resnet_serve.datasets import load_image_folder
from resnet_serve.models import create_model
from resnet_serve.runtimes import TorchRuntime
from resnet_serve.samples import photo_crops, with_realistic_batchnorm
from resnet_serve.triton.server import TritonServer, find_free_ports

pytestmark = pytest.mark.triton
runner = CliRunner()
NAME = "photos"


def invoke(*arguments: str) -> None:
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("photos-run")


@pytest.fixture(scope="module")
def photos(work: Path) -> Path:
    write_photo_folder(work / "photos" / "train", per_class=12, sides=(48, 160))
    write_photo_folder(work / "photos" / "val", per_class=5, sides=(48, 160), seed=1)
    return work / "photos"


@pytest.fixture(scope="module")
def fine_tuned(work: Path, photos: Path) -> Path:
    # What torchvision's resnet18 state dict holds (our names are its names), with BatchNorm
    # statistics measured on real photos so the frozen stages compute features of them.
    torch.manual_seed(0)
    images = torch.from_numpy(IMAGENET_PREPROCESSING.normalize(photo_crops(16, size=64)))
    torch.save(with_realistic_batchnorm(create_model("resnet18"), images, seed=0).state_dict(), work / "resnet18.pth")
    invoke("import", str(work / "resnet18.pth"), "--arch", "resnet18", "-o", str(work / "imported.safetensors"))
    invoke("train", "--init", str(work / "imported.safetensors"), "--data", str(photos), "--image-size", "64",
           "--trainable", "last-stage", "--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--head-lr", "0.1",
           "-o", str(work / "fine-tuned.safetensors"), "--json", str(work / "train.json"))
    return work / "fine-tuned.safetensors"


@pytest.fixture(scope="module")
def server(work: Path, photos: Path, fine_tuned: Path) -> Iterator[TritonServer]:
    invoke("export", str(fine_tuned), "--repository", str(work / "repository"), "--name", NAME, "--data", str(photos))
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(repository=work / "repository", http_port=http, grpc_port=grpc, metrics_port=metrics,
                      log_file=work / "tritonserver.log") as running:
        yield running


def test_the_fine_tuned_checkpoint_keeps_the_imported_preprocessing(fine_tuned: Path, work: Path) -> None:
    meta = load_checkpoint(fine_tuned).meta
    assert meta.architecture == "resnet18" and meta.class_names == list(PHOTO_FOLDER_CLASSES)
    # ImageNet's statistics and interpolation from the import; the size asked for, resized as ImageNet's 224/256.
    assert (meta.preprocessing.mean, meta.preprocessing.std) == (IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std)
    assert (meta.preprocessing.height, meta.preprocessing.resize) == (64, 73)
    trained = json.loads((work / "train.json").read_text())
    assert trained["val_images"] == 20 and trained["train_images"] == 48
    assert [row["epoch"] for row in trained["history"]] == [1]
    assert all(row["val_top1"] is not None and row["images_per_second"] > 0 for row in trained["history"])


def test_served_top1_equals_in_process_top1_on_every_val_image(
    server: TritonServer, photos: Path, fine_tuned: Path, work: Path
) -> None:
    report = work / "evaluate.json"
    invoke("evaluate", "--url", server.urls.grpc, "--data", str(photos), "--checkpoint", str(fine_tuned),
           "--batch-size", "8", "--json", str(report))
    evaluation = json.loads(report.read_text())
    assert evaluation["images"] == 20 and evaluation["agreement"] == 1.0
    assert evaluation["max_abs_logit_difference"] <= 1e-4
    # The accuracy validation measured in training is the served one: same images, same preparation.
    assert evaluation["top1"] == evaluation["reference_top1"] == load_checkpoint(fine_tuned).meta.metrics["test_accuracy"]


def test_the_image_ensemble_gives_the_same_classes_from_the_jpeg_bytes(
    server: TritonServer, photos: Path, fine_tuned: Path
) -> None:
    val = load_image_folder(photos, split="test")
    checkpoint = load_checkpoint(fine_tuned)
    inputs = np.stack([checkpoint.meta.preprocessing.load_image(path) for path in val.files])
    expected = TorchRuntime(checkpoint.model).run(inputs).argmax(1)
    served = classify_files_server_side(paths=list(val.files), model=f"{NAME}-image", protocol="grpc",
                                        url=server.urls.grpc, top_k=1)
    assert [image.top[0].index for image in served.images] == expected.tolist()
    assert [image.top[0].label for image in served.images] == [PHOTO_FOLDER_CLASSES[i] for i in expected]
