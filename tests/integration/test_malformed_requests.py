"""Malformed requests against the real embedded tritonserver, through the python-backend proxy:
each gets an error answer (or, where HTTP itself is broken, a closed connection), and the server
answers the next valid request. The two requests that crash tritonserver 2.51 are in
test_server_supervision.py, where `serve` restarts it.

The server runs with an admin key, as `serve` does: the restricted APIs refuse requests
without it, over HTTP and gRPC, and our own client and the server launcher pass it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from samples import fashion_mnist
from tiny_onnx import CLASS_NAMES, PREPROCESSING, export_tiny_classifier, write_entry
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from resnet_serve.client.connection import ConnectionOptions
from resnet_serve.client.inference import InferenceClient
from resnet_serve.errors import ClientError
from resnet_serve.triton.server import TritonServer, find_free_ports
from resnet_serve.triton.serving import ONNXRUNTIME

pytestmark = pytest.mark.triton

KEY = "malformed-requests-test-admin-key"
INFER = "/v2/models/tiny/infer"
# Triton 2.51's HTTP frontend answers a body it cannot parse as JSON, and JSON whose values have
# the wrong type or count, with 500 (it files them as internal errors); the same request is the
# client's fault, and the server is unharmed, which is what these cases check.
PARSE_ERROR_IN_2_51 = 500


def export_flattening_classifier(path: Path) -> None:
    """An ONNX file that declares any image size but flattens to 784 values: onnxruntime itself
    refuses any other size, at run time (the onnxruntime backend loads it, its dims being open)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["logits"])],
        "flattening",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.array([-1, 784], dtype=np.int64), "shape"),
         numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32), "weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("malformed")
    export_tiny_classifier(root / "tiny.onnx")
    export_flattening_classifier(root / "any_size.onnx")
    for name, model in (("tiny", "tiny.onnx"), ("tiny_any_size", "any_size.onnx")):
        write_entry(repository=root / "repository", name=name, model_file=root / model,
                          class_names=CLASS_NAMES, preprocessing=PREPROCESSING, metadata={}, target=ONNXRUNTIME)
    # Its config lets any image size through, as its ONNX file declares.
    config = root / "repository" / "tiny_any_size" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: 1\n  dims: 28\n  dims: 28", "dims: 1\n  dims: -1\n  dims: -1"))
    http, grpc_port, metrics = find_free_ports(3)
    with TritonServer(repository=root / "repository", http_port=http, grpc_port=grpc_port, metrics_port=metrics,
                      log_file=root / "tritonserver.log", admin_key=KEY) as running:
        yield running


def post(server: TritonServer, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.urls.http}{path}", data=body, method="POST",
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def json_infer(model: str = "tiny", **tensor: object) -> bytes:
    body = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": fashion_mnist(1).ravel().tolist()}
    return json.dumps({"inputs": [{**body, **tensor}]}).encode()


def binary_infer(*, header_length: int | None = None, extra: bytes = b"", cut: int = 0) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 784 * 4}}]}).encode()
    body = header + fashion_mnist(1).tobytes() + extra
    body = body[:len(body) - cut]
    return body, {"Inference-Header-Content-Length": str(len(header) if header_length is None else header_length)}


def assert_still_serving(server: TritonServer) -> None:
    status, answer = post(server, INFER, json_infer())
    assert status == 200, answer
    assert server.is_running


BINARY = {name: binary_infer(**options) for name, options in {
    "binary header length beyond the body": {"header_length": 10_000},
    "binary header length negative": {"header_length": -5},
    "binary header length inside the JSON": {"header_length": 10},
    "binary data shorter than declared": {"cut": 4},
    "binary data longer than declared": {"extra": b"\0\0\0\0"},
}.items()}
JSON_CASES = {
    "garbage JSON": (b"{this is not json", PARSE_ERROR_IN_2_51),
    "deeply nested JSON": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
    "deeply nested JSON without inputs": (b"[" * 100_000 + b"]" * 100_000, PARSE_ERROR_IN_2_51),
    "wrong shape": (json_infer(shape=[1, 1, 28, 27], data=[0.0] * 756), 400),
    "wrong rank": (json_infer(shape=[1, 784]), 400),
    "negative dimension": (json_infer(shape=[-1, 1, 28, 28]), PARSE_ERROR_IN_2_51),
    "wrong datatype": (json_infer(datatype="INT64", data=[0] * 784), 400),
    "unknown datatype": (json_infer(datatype="FP99"), 400),
    "wrong input name": (json_infer(name="pixels"), 400),
    "fewer values than the shape": (json_infer(data=[0.0] * 783), PARSE_ERROR_IN_2_51),
    "more values than the shape": (json_infer(data=[0.0] * 785), PARSE_ERROR_IN_2_51),
    "values of the wrong type": (json_infer(data=["a"] * 784), PARSE_ERROR_IN_2_51),
    "batch above max_batch_size": (json_infer(shape=[65, 1, 28, 28], data=[0.0] * 784 * 65), 400),
    "unknown model": (json_infer(), 404),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_a_malformed_json_request_is_refused_and_the_server_keeps_serving(server: TritonServer, case: str) -> None:
    body, expected = JSON_CASES[case]
    path = "/v2/models/absent/infer" if case == "unknown model" else INFER

    status, answer = post(server, path, body)

    assert status == expected, answer
    assert "error" in json.loads(answer)
    assert_still_serving(server)


@pytest.mark.parametrize("case", list(BINARY))
def test_a_binary_request_whose_lengths_lie_is_refused(server: TritonServer, case: str) -> None:
    body, headers = BINARY[case]

    status, answer = post(server, INFER, body, headers)

    expected = PARSE_ERROR_IN_2_51 if case == "binary header length inside the JSON" else 400
    assert status == expected, answer
    assert_still_serving(server)


def raw_exchange(server: TritonServer, request: bytes, *, half_close: bool = False) -> bytes:
    """Everything the server sends back on one connection until it closes it (or 10 s pass)."""
    host, port = server.urls.http.rsplit(":", 1)
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


def test_content_length_lies_get_an_error_or_a_closed_connection(server: TritonServer) -> None:
    body = json_infer()

    def request(length: str) -> bytes:
        return f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode() + body

    # Shorter than the body: the first part is a truncated JSON document, the rest is not HTTP.
    shorter = raw_exchange(server, request(str(len(body) - 100)))
    assert shorter.startswith(b"HTTP/1.1 500") and b"failed to parse the request JSON" in shorter
    # Longer than the body: the server waits for the rest; when the client stops sending, it
    # closes the connection without answering.
    assert raw_exchange(server, request(str(len(body) + 100)), half_close=True) == b""
    # Not a length at all: HTTP itself is broken, and the connection is closed.
    assert raw_exchange(server, request("-1")) == b""
    assert_still_serving(server)


def grpc_request(**changes: object) -> service_pb2.ModelInferRequest:
    images = fashion_mnist(1)
    request = service_pb2.ModelInferRequest(model_name=changes.pop("model", "tiny"))
    tensor = request.inputs.add()
    tensor.name = str(changes.pop("name", "input"))
    tensor.datatype = str(changes.pop("datatype", "FP32"))
    tensor.shape.extend(changes.pop("shape", [1, 1, 28, 28]))
    request.raw_input_contents.append(changes.pop("raw", images.tobytes()))
    assert not changes
    return request


GRPC_CASES = {
    "wrong shape": (grpc_request(shape=[1, 1, 28, 27]), grpc.StatusCode.INVALID_ARGUMENT),
    "fewer bytes than the shape": (grpc_request(raw=b"\0" * 100), grpc.StatusCode.INVALID_ARGUMENT),
    "a huge shape with 784 values": (grpc_request(shape=[10_000_000, 1, 28, 28]), grpc.StatusCode.INVALID_ARGUMENT),
    "wrong datatype": (grpc_request(datatype="FP16"), grpc.StatusCode.INVALID_ARGUMENT),
    "wrong input name": (grpc_request(name="pixels"), grpc.StatusCode.INVALID_ARGUMENT),
    "batch above max_batch_size": (grpc_request(shape=[65, 1, 28, 28], raw=b"\0" * 65 * 784 * 4),
                                   grpc.StatusCode.INVALID_ARGUMENT),
    "unknown model": (grpc_request(model="absent"), grpc.StatusCode.NOT_FOUND),
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_a_malformed_grpc_request_is_refused_and_the_server_keeps_serving(server: TritonServer, case: str) -> None:
    request, expected = GRPC_CASES[case]
    with grpc.insecure_channel(server.urls.grpc) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)

    assert refused.value.code() == expected, refused.value.details()
    assert_still_serving(server)


def test_a_shape_the_model_itself_refuses_is_answered_as_the_onnxruntime_backend_answers(server: TritonServer) -> None:
    """The config lets [1, 20, 20] through; onnxruntime fails the run, and the backend answers its
    failure as its own: INTERNAL (HTTP 500), "onnx runtime error <code>: <message>"."""
    status, answer = post(server, "/v2/models/tiny_any_size/infer",
                          json_infer(shape=[1, 1, 20, 20], data=[0.0] * 400))

    assert status == 500 and "onnx runtime error" in answer and "Reshape" in answer, answer
    assert post(server, "/v2/models/tiny_any_size/infer", json_infer())[0] == 200


def test_the_admin_apis_need_the_key_and_our_client_passes_it(server: TritonServer) -> None:
    restricted = {
        "/v2/repository/index": b"{}",
        "/v2/logging": json.dumps({"log_verbose_level": 1}).encode(),
        "/v2/systemsharedmemory/region/stolen/register": json.dumps({"key": "/triton_python_backend_shm_region_x", "offset": 0, "byte_size": 8}).encode(),
        "/v2/trace/setting": json.dumps({"trace_level": ["TIMESTAMPS"]}).encode(),
        "/v2/repository/models/tiny/unload": b"{}",
    }
    for path, body in restricted.items():
        status, answer = post(server, path, body)
        assert status == 403 and "admin-key" in answer, (path, status, answer)
        assert post(server, path, body, {"admin-key": "not-the-key"})[0] == 403
    with pytest.raises(InferenceServerException, match="restricted"):
        grpcclient.InferenceServerClient(server.urls.grpc).get_log_settings()
    assert post(server, "/v2/repository/index", b"{}", {"admin-key": KEY})[0] == 200
    assert server.ready_versions() == {"tiny": (1,), "tiny_any_size": (1,)}  # the launcher passes it

    for protocol, url in (("http", server.urls.http), ("grpc", server.urls.grpc)):
        # Without the key the client lists the models from the open statistics endpoint.
        with pytest.raises(ClientError, match="has 2 ready models that take float images: tiny, tiny_any_size"):
            InferenceClient(protocol=protocol, url=url)
        with InferenceClient(model="tiny", protocol=protocol, url=url) as named:
            assert named.model.name == "tiny"
        keyed = ConnectionOptions(admin_key=KEY)
        # With the key the client reads the list of models, which here has two to choose from.
        with pytest.raises(ClientError, match="has 2 ready models that take float images: tiny, tiny_any_size"):
            InferenceClient(protocol=protocol, url=url, connection=keyed)
        with InferenceClient(model="tiny", protocol=protocol, url=url, connection=keyed) as client:
            assert client.ready_models() == ["tiny", "tiny_any_size"]
            assert client.infer(fashion_mnist(2)).shape == (2, 10)


def test_the_log_tail_skips_the_stack_dump(tmp_path: Path) -> None:
    """What `serve` prints of a crashed server's log: the last lines that say something."""
    server = TritonServer(repository=tmp_path, log_file=tmp_path / "triton.log")
    (tmp_path / "triton.log").write_text(
        'I1129 21:23:35 1 http_server.cc:362] "Started Metrics Service"\n'
        "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n"
        "Signal (6) received.\n 0# 0x000055561604952D in tritonserver\n 1# 0x00007FF5D405A050 in libc.so.6\n\n"
    )
    assert server.log_tail() == ["terminate called after throwing an instance of 'std::bad_alloc'",
                                 "what():  std::bad_alloc", "Signal (6) received."]
