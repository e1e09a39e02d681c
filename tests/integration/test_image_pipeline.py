"""Encoded images in, labelled top-k out: the `<name>-image` ensemble on the real embedded
tritonserver, against client-side preprocessing of the same files.

One server serves two classifiers (written with the python-onnxruntime target, which the
embedded server runs) and their image pipelines:
  tiny     Fashion-MNIST (1×28×28), every one of the 10,000 test images sent as PNG bytes
  photo    3×32×32 after a shorter-side resize to 36 and a centre crop, real photos as JPEG
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image
from samples import FASHION_PREPROCESSING, fashion_test_set
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from torch import nn
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from resnet_serve.cli import app
from resnet_serve.client.classify import classify_files_server_side
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.triton.repository import write_image_pipeline
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import PYTHON_ONNXRUNTIME

pytestmark = pytest.mark.triton

REPO_ROOT = Path(__file__).resolve().parents[2]
PHOTO_PREPROCESSING = Preprocessing(
    channels=3, height=32, width=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=36
)
PHOTO_CLASSES = ["cat", "astronaut", "coffee", "rocket"]
BATCH = 64


def export_photo_classifier(path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, len(PHOTO_CLASSES)),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.randn(1, *PHOTO_PREPROCESSING.input_shape),), str(path), dynamo=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def encode(image: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos of four sizes (scikit-image's), as JPEG files."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        path = folder / f"{name}.jpg"
        path.write_bytes(encode(getattr(data, name)(), "JPEG"))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Iterator[TritonServer]:
    scratch = tmp_path_factory.mktemp("models")
    repository = tmp_path_factory.mktemp("repository")
    export_tiny_classifier(scratch / "tiny.onnx")
    export_photo_classifier(scratch / "photo.onnx")
    write_entry(
        repository=repository, name="tiny", model_file=scratch / "tiny.onnx", class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING, target=PYTHON_ONNXRUNTIME,
        warmup_images=FASHION_PREPROCESSING.normalize(fashion_test_set().images[:2]),
    )
    write_entry(
        repository=repository, name="photo", model_file=scratch / "photo.onnx", class_names=PHOTO_CLASSES,
        preprocessing=PHOTO_PREPROCESSING,
        target=PYTHON_ONNXRUNTIME, warmup_images=PHOTO_PREPROCESSING.load_image(photos[0])[None],
    )
    for classifier in ("tiny", "photo"):
        write_image_pipeline(repository=repository, classifier=classifier)
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(
        repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics, log_verbose=1,
        log_file=repository.parent / "tritonserver.log",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.urls.grpc) as connection:
        yield connection


def classify_bytes(client: grpcclient.InferenceServerClient, model: str, files: list[bytes], k: int) -> np.ndarray:
    batch = np.array(files, dtype=np.object_).reshape(-1, 1)
    request = grpcclient.InferInput("image", list(batch.shape), "BYTES")
    request.set_data_from_numpy(batch)
    output = grpcclient.InferRequestedOutput("logits", class_count=k)
    return client.infer(model, [request], outputs=[output]).as_numpy("logits")


def logits_of(client: grpcclient.InferenceServerClient, model: str, batch: np.ndarray) -> np.ndarray:
    request = grpcclient.InferInput("input", list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    return client.infer(model, [request]).as_numpy("logits")


def parse(entry: bytes) -> tuple[float, int, str]:
    score, index, label = entry.decode().split(":", 2)
    return float(score), int(index), label


def test_the_classifier_and_its_preprocessing_warm_up_with_real_images(server: TritonServer) -> None:
    log = server.log_file.read_text()

    for model, sample in (("tiny", "real_image_0"), ("tiny", "real_image_1"),
                          ("tiny-preprocess", "real_image_png"), ("photo-preprocess", "real_image_png")):
        assert re.search(rf"model '{model}' instance \S+ is running warmup sample '{sample}'", log), (model, sample)


def test_top1_from_png_bytes_equals_client_side_preprocessing_on_all_test_images(
    client: grpcclient.InferenceServerClient,
) -> None:
    test_set = fashion_test_set()
    encoded = [encode(image) for image in test_set.images]
    from_bytes, from_tensors = [], []

    for start in range(0, len(encoded), BATCH):
        answers = classify_bytes(client, "tiny-image", encoded[start : start + BATCH], k=1)
        from_bytes += [parse(row[0]) for row in answers]
        prepared = FASHION_PREPROCESSING.normalize(test_set.images[start : start + BATCH])
        from_tensors.append(logits_of(client, "tiny", prepared))

    logits = np.concatenate(from_tensors)
    assert len(from_bytes) == len(logits) == 10_000
    assert [index for _, index, _ in from_bytes] == logits.argmax(axis=1).tolist()
    assert [label for _, _, label in from_bytes] == [CLASS_NAMES[i] for i in logits.argmax(axis=1)]
    # The classification extension prints scores with six decimals.
    np.testing.assert_allclose([score for score, _, _ in from_bytes], logits.max(axis=1), atol=1e-5)


def test_jpeg_photos_of_different_sizes_classify_as_with_client_side_preprocessing(
    server: TritonServer, client: grpcclient.InferenceServerClient, photos: list[Path]
) -> None:
    assert len({Image.open(path).size for path in photos}) == 4
    logits = logits_of(client, "photo", np.stack([PHOTO_PREPROCESSING.load_image(path) for path in photos]))

    result = classify_files_server_side(paths=photos, model="photo", protocol="grpc", url=server.urls.grpc, top_k=3)

    assert result.model == "photo-image"
    for row, found in zip(logits, result.images, strict=True):
        expected = np.argsort(-row)[:3]
        assert [s.index for s in found.top] == expected.tolist()
        assert [s.label for s in found.top] == [PHOTO_CLASSES[i] for i in expected]
        np.testing.assert_allclose([s.score for s in found.top], row[expected], atol=1e-5)


def png_bomb(side: int = 10_000) -> bytes:
    """A valid PNG of side×side 1-bit pixels (100 million) in about 15 kB of compressed zeros."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" * (1 + side // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_bad_files_get_an_error_answer_and_the_server_keeps_serving(
    client: grpcclient.InferenceServerClient, photos: list[Path]
) -> None:
    jpeg = photos[1].read_bytes()
    good = encode(fashion_test_set().images[0])
    expected = parse(classify_bytes(client, "tiny-image", [good], k=1)[0][0])
    bad_files = {
        "pixels, more than the .* an image may have; refused before decoding": png_bomb(),
        "truncated": jpeg[: len(jpeg) // 2],
        "cannot identify image file": b"%PDF-1.7 this is a document, not an image",
    }

    for reason, bad in bad_files.items():
        with pytest.raises(InferenceServerException, match=reason) as refused:
            classify_bytes(client, "photo-image", [bad], k=1)
        # The client's error, through the ensemble too (HTTP 400, not 500).
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert parse(classify_bytes(client, "tiny-image", [good], k=1)[0][0]) == expected


def test_the_docs_curl_command_returns_the_top_3_labels(server: TritonServer, photos: list[Path]) -> None:
    page = (REPO_ROOT / "docs" / "model-repository.md").read_text()
    (command,) = [block for block in re.findall(r"```bash\n(.*?)```", page, re.S)
                  if "Inference-Header-Content-Length" in block]
    command = command.replace("localhost:8000", server.urls.http).replace("resnet20-fashion-image", "photo-image")

    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command.replace("shirt.jpg", str(photos[0]))],
        capture_output=True, text=True, timeout=60, check=True,
    )

    (output,) = json.loads(done.stdout)["outputs"]
    assert output["name"] == "logits" and output["shape"] == [1, 3]
    assert [entry.split(":", 2)[2] for entry in output["data"]][0] in PHOTO_CLASSES


def test_classify_server_side_command_prints_the_labels(server: TritonServer, tmp_path: Path) -> None:
    images = fashion_test_set().images[:3]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode(image))

    result = CliRunner().invoke(app, ["classify", "--server-side", "--model", "tiny", "--url", server.urls.http,
                                      "-k", "2", *map(str, paths)])

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p) for p in paths]
    assert all(line.split(": ")[1].split()[0] in CLASS_NAMES for line in lines)


def test_classify_server_side_refuses_a_missing_file_or_model_in_one_line(server: TritonServer, tmp_path: Path) -> None:
    image = tmp_path / "shirt.png"
    image.write_bytes(encode(fashion_test_set().images[0]))

    for arguments, reason in (([str(tmp_path / "absent.jpg")], "cannot read"),
                              (["--model", "absent", str(image)], "model 'absent' is not ready"),
                              ([str(image)], "ready models that classify encoded images: photo-image, tiny-image")):
        result = CliRunner().invoke(app, ["classify", "--server-side", "--url", server.urls.http, *arguments])
        assert result.exit_code == 1
        assert len(result.output.strip().splitlines()) == 1 and reason in result.output, result.output


def test_a_generic_triton_image_client_accepts_the_classifier(server: TritonServer, photos: list[Path]) -> None:
    """The checks and calls of Triton's own src/python/examples/image_client.py (client repository,
    r24.10 = r26.04: parse_model, then an infer with class_count), written as it writes them: it
    refuses an input without FORMAT_NCHW/FORMAT_NHWC, which our classifier entries now declare."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.urls.http)
    model_metadata = client.get_model_metadata("photo")
    model_config = client.get_model_config("photo")
    # parse_model()
    assert len(model_metadata["inputs"]) == 1 and len(model_metadata["outputs"]) == 1
    assert len(model_config["input"]) == 1
    input_metadata, input_config = model_metadata["inputs"][0], model_config["input"][0]
    output_metadata = model_metadata["outputs"][0]
    assert output_metadata["datatype"] == "FP32"
    output_batch_dim = model_config["max_batch_size"] > 0
    assert sum(1 for dim in output_metadata["shape"][1 if output_batch_dim else 0:] if dim > 1) == 1
    input_batch_dim = model_config["max_batch_size"] > 0
    assert len(input_metadata["shape"]) == 3 + input_batch_dim
    # image_client.py takes FORMAT_NHWC too (and refuses FORMAT_NONE); ours declare NCHW.
    assert input_config["format"] == "FORMAT_NCHW"
    c, h, w = input_metadata["shape"][1:]
    # preprocess(): resize to the model's size, scaling "NONE", NCHW; then requestGenerator()
    image = np.asarray(Image.open(photos[0]).convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32)
    batch = image.transpose(2, 0, 1)[None]
    inputs = [httpclient.InferInput(input_metadata["name"], [1, c, h, w], input_metadata["datatype"])]
    inputs[0].set_data_from_numpy(batch)
    outputs = [httpclient.InferRequestedOutput(output_metadata["name"], class_count=3)]

    response = client.infer("photo", inputs, request_id="1", outputs=outputs)

    # postprocess(): each result is "score:index:label".
    output_array = response.as_numpy(output_metadata["name"])
    assert len(output_array) == 1
    results = [(result.decode() if isinstance(result, bytes) else result).split(":") for result in output_array[0]]
    assert len(results) == 3 and all(len(cls) == 3 and cls[2] in PHOTO_CLASSES for cls in results)
    assert float(results[0][0]) >= float(results[1][0]) >= float(results[2][0])


def test_a_generic_triton_ensemble_client_sends_a_batch_of_files(server: TritonServer, photos: list[Path]) -> None:
    """Triton's src/python/examples/ensemble_image_client.py, as it writes its calls: the batch is
    min(#images, max_batch_size) raw files, each np.array([bytes]) stacked to [batch, 1] BYTES,
    every output asked for with class_count."""
    client = grpcclient.InferenceServerClient(server.urls.grpc)
    model_metadata = client.get_model_metadata(model_name="photo-image")
    model_config = client.get_model_config(model_name="photo-image").config
    assert len(model_metadata.inputs) == 1 and len(model_config.input) == 1
    input_name = model_metadata.inputs[0].name
    output_names = [output.name for output in model_metadata.outputs]
    batch_size = min(len(photos), model_config.max_batch_size)
    assert batch_size == len(photos)
    image_data = [np.array([path.read_bytes()], dtype=bytes) for path in photos[:batch_size]]
    batched_image_data = np.stack(image_data, axis=0)
    inputs = [grpcclient.InferInput(input_name, batched_image_data.shape, "BYTES")]
    inputs[0].set_data_from_numpy(batched_image_data)
    outputs = [grpcclient.InferRequestedOutput(name, class_count=2) for name in output_names]

    response = client.infer("photo-image", inputs, outputs=outputs)

    expected = [int(np.argmax(logits_of(client, "photo", PHOTO_PREPROCESSING.load_image(path)[None])[0]))
                for path in photos]
    for name in output_names:
        results = response.as_numpy(name)
        assert results.shape == (batch_size, 2)
        assert [parse(row[0])[1] for row in results] == expected
        assert all(parse(entry)[2] in PHOTO_CLASSES for row in results for entry in row)


@pytest.mark.parametrize("engine", ["resnet-serve", "perf_analyzer"])
def test_bench_sends_the_folders_files_and_splits_the_time_between_the_steps(
    server: TritonServer, client: grpcclient.InferenceServerClient, photos: list[Path], tmp_path: Path, engine: str
) -> None:
    def served(model: str) -> int:
        return int(client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_count"])

    before = served("photo-preprocess")
    report = tmp_path / "bench.json"
    # Short windows and a loose rule: this checks what is measured, not how steady 2 shared cores are.
    result = CliRunner().invoke(app, [
        "bench", "--url", server.urls.grpc, "--model", "photo", "--images", str(photos[0].parent), "--engine", engine,
        "--concurrency", "2", "--batch-size", "3", "--warmup", "0.2", "--measurement-interval", "300",
        "--stability-percentage", "1000", "--json", str(report),
    ])

    assert result.exit_code == 0, result.output
    (row,) = json.loads(report.read_text())["results"]
    assert json.loads(report.read_text())["model"] == "photo-image" and row["requests"] > 0
    assert [step["model"] for step in row["steps"]] == ["photo-preprocess", "photo"]
    for step in row["steps"]:
        # Every request of the ensemble ran each step once, in batches of one or more requests.
        assert step["requests"] >= step["executions"] > 0 and step["compute_infer_us"] > 0
    # Three files per request: the steps count images, and decoding JPEGs costs more than a 32² conv.
    assert served("photo-preprocess") - before >= 3 * row["requests"]
    assert row["steps"][0]["compute_infer_us"] > row["steps"][1]["compute_infer_us"]
    assert "photo-preprocess: queue" in result.output


def test_bench_refuses_an_image_ensemble_without_files_and_a_folder_without_images(
    server: TritonServer, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    for arguments, reason in ((["--model", "photo-image"], "takes encoded image files, not float images"),
                              (["--model", "photo", "--images", str(tmp_path)], "notes.txt: not a readable image"),
                              (["--model", "photo", "--images", str(tmp_path / "absent")], "not a folder of image")):
        result = CliRunner().invoke(app, ["bench", "--url", server.urls.grpc, *arguments])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 and reason in result.output, result.output
