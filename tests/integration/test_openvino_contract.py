"""OpenVINO entries on the real embedded tritonserver answer requests as Triton's OpenVINO
backend does (openvino_backend src/openvino.cc ProcessRequests, r24.10 to r26.08):

- max_batch_size 1 (what export writes for the openvino target) answers every request;
- max_batch_size 4 without ENABLE_BATCH_PADDING fixes the model's batch to 4 and fails every
  execution of another total, "expected requests with batch size '4', got '1'";
- with ENABLE_BATCH_PADDING each execution is zero-padded to 4, and the pad size is never reset:
  a request of exactly 4 images after a padded one gets too few rows back and fails.

Answers that succeed equal OpenVINO in process on the same file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from resnet_serve.runtimes import OpenVinoRuntime
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import OPENVINO

pytestmark = pytest.mark.triton

IMAGES = fashion_mnist(8)


def edit(entry: Path, change: Callable[[model_config_pb2.ModelConfig], None]) -> None:
    config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    change(config)
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))


def fixed_batch(size: int, *, padding: bool) -> Callable[[model_config_pb2.ModelConfig], None]:
    """What a user who edits an entry by hand (or an older export) gives the backend."""
    def change(config: model_config_pb2.ModelConfig) -> None:
        config.max_batch_size = size
        config.ClearField("dynamic_batching")
        if padding:
            config.parameters["ENABLE_BATCH_PADDING"].string_value = "yes"
    return change


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    root = tmp_path_factory.mktemp("openvino")
    export_tiny_classifier(root / "tiny.onnx")
    repository = root / "repository"
    # ov4pad has one instance: each instance keeps its own pad size.
    for name, instances in (("ov1", 2), ("ov4", 2), ("ov4pad", 1)):
        write_entry(repository=repository, name=name, model_file=root / "tiny.onnx", class_names=CLASS_NAMES,
                          preprocessing=PREPROCESSING, target=OPENVINO, instances=instances,
                          warmup_images=IMAGES[:2] if name == "ov1" else None)
    edit(repository / "ov4", fixed_batch(4, padding=False))
    edit(repository / "ov4pad", fixed_batch(4, padding=True))
    http, grpc, metrics = find_free_ports(3)
    with TritonServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                      log_file=root / "triton.log") as server:
        yield server, root / "tiny.onnx"


def infer(server: TritonServer, model: str, batch: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(server.urls.grpc) as client:
        request = grpcclient.InferInput("input", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        return client.infer(model, [request]).as_numpy("logits")


def assert_as_in_process(served: np.ndarray, onnx_path: Path, batch: np.ndarray) -> None:
    """Like the backend, the proxy sets no precision: OpenVINO computes in BF16 on CPUs that have
    it, FP32 elsewhere, in process too. FP32 kernels of another batch size agree to rounding;
    BF16 keeps 8 significant bits (2^-8 relative per rounded value), and the tiny net rounds at
    its convolution, pooling and linear layer: a few 2^-8 of the logits' scale, 8 allowed."""
    runtime = OpenVinoRuntime(onnx_path, precision=None)
    expected = runtime.run(batch)
    scale = np.abs(expected).max()
    atol = 8 * 2.0**-8 * scale if runtime.inference_precision == "bf16" else 1e-5 * scale
    np.testing.assert_allclose(served, expected, rtol=0, atol=atol)


def test_every_entry_loads_and_the_fixed_batch_ones_say_what_they_will_fail(served) -> None:
    server, _ = served
    assert server.ready_versions() == {"ov1": (1,), "ov4": (1,), "ov4pad": (1,)}
    notes = {entry.name: " ".join(entry.notes) for entry in server.served}
    assert "[openvino.exact-batch]" in notes["ov4"] and "[openvino.batch-padding]" in notes["ov4pad"]
    assert notes["ov1"] == ""


def test_max_batch_size_1_answers_every_request_concurrent_ones_included(served) -> None:
    server, onnx_path = served
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: infer(server, "ov1", IMAGES[i:i + 1]), range(8)))
    assert_as_in_process(np.concatenate(answers), onnx_path, IMAGES)
    with pytest.raises(InferenceServerException, match="inference request batch-size must be <= 1"):
        infer(server, "ov1", IMAGES[:2])


def test_a_fixed_batch_without_padding_fails_every_other_total(served) -> None:
    server, onnx_path = served
    for size in (1, 3):
        with pytest.raises(InferenceServerException, match=f"expected requests with batch size '4', got '{size}'"):
            infer(server, "ov4", IMAGES[:size])
    assert_as_in_process(infer(server, "ov4", IMAGES[:4]), onnx_path, IMAGES[:4])


def test_padding_keeps_a_stale_pad_size_and_then_cuts_a_full_batch_short(served) -> None:
    server, onnx_path = served
    # Padded from 1 to 4: the pad size is now 3.
    assert_as_in_process(infer(server, "ov4pad", IMAGES[:1]), onnx_path, IMAGES[:1])
    with pytest.raises(InferenceServerException, match="failed to split the output tensor 'logits' in "
                       "responses: expected batch size of at least 4 in model output, got 1"):
        infer(server, "ov4pad", IMAGES[:4])
    # A partial batch sets the pad size again and is answered.
    assert_as_in_process(infer(server, "ov4pad", IMAGES[:2]), onnx_path, IMAGES[:2])
