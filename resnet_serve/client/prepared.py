"""Requests serialised once and sent many times: the client half of a load generator.

A benchmark that builds every request in Python measures Python: building `InferInput`s,
copying the batch into them and serialising the protobuf cost about as much as the server's
work on a small model. Like perf_analyzer, which prepares its inputs once, a `PreparedRequest`
holds the request already in its wire format; a sender puts those same bytes on its own
connection for every request. What is left per request is what any client must do: wait for
the answer and turn it into an array of logits, which is timed as the client's receive time.

- gRPC: the `ModelInferRequest` protobuf is serialised once and sent through a unary call
  without a serializer (bytes in, bytes out) on a channel of the sender's own, so that each
  concurrency slot has its own connection, as perf_analyzer's threads have. gRPC writes the
  bytes inside the call, so its send time cannot be told apart from the wire: a gRPC sender's
  client send time is the zero work it does before the call.
- HTTP: tritonclient builds the binary-tensor body once; the sender posts it over one
  keep-alive connection. Its client send time is the time to write the request to the socket.

Both connect as the request's `Endpoint` says: TLS or not, with its headers (gRPC metadata).
A `RetryingSender` reconnects and tries a failed request again, to ride out a server restart.

A request may hold several bodies, sent in turn (as perf_analyzer goes round its --input-data):
`prepare_image_requests` makes one per group of encoded files, so that a benchmark of an image
ensemble sends every file of a folder, not one file again and again.
"""

from __future__ import annotations

import http.client
import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from resnet_serve.client.classify import EncodedImageModel
from resnet_serve.client.connection import Endpoint, Protocol
from resnet_serve.client.inference import ServedModel
from resnet_serve.client.retries import Retries
from resnet_serve.errors import ClientError, first_line

# The unary method every Triton server offers over gRPC (inference.GRPCInferenceService).
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A channel of its own per slot, not a connection shared through gRPC's global pool.
    ("grpc.use_local_subchannel_pool", 1),
]

# (began, sent, answered, ended) in time.perf_counter_ns() of one request: the client's send
# time is sent - began, its receive time ended - answered, the latency ended - began.
RequestTimes = tuple[int, int, int, int]


@dataclass(frozen=True)
class PreparedRequest:
    """Inference requests of ``batch_size`` images in the wire format of their endpoint's
    protocol: one body, or several that a sender sends in turn."""

    endpoint: Endpoint
    model: str
    output_name: str
    batch_size: int
    num_classes: int
    bodies: tuple[bytes, ...]
    # HTTP only: the length of the JSON header at the start of each body.
    json_sizes: tuple[int, ...] | None = None
    timeout_s: float = 60.0

    @property
    def protocol(self) -> Protocol:
        return self.endpoint.protocol

    def open(self) -> RequestSender:
        """A sender with its own connection (not thread-safe: one per thread)."""
        return GrpcSender(self) if self.protocol == "grpc" else HttpSender(self)


class RequestSender(TypingProtocol):
    def send(self) -> RequestTimes:
        """Send the prepared request once and check the answer; raises ClientError."""

    def close(self) -> None: ...


def prepare_request(
    *, served: ServedModel, batch: np.ndarray, endpoint: Endpoint, timeout_s: float = 60.0
) -> PreparedRequest:
    """Serialise ``batch`` ([N, C, H, W], float32) as an inference request for ``served``."""
    served.check_batch(batch)
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    body, json_size = _serialise(endpoint.protocol, model=served.name, input_name=served.input_name,
                                 output_name=served.output_name, datatype="FP32", tensor=batch)
    return PreparedRequest(
        endpoint=endpoint, model=served.name, output_name=served.output_name,
        batch_size=int(batch.shape[0]), num_classes=served.num_classes, bodies=(body,),
        json_sizes=None if json_size is None else (json_size,), timeout_s=timeout_s,
    )


def prepare_image_requests(
    *, model: EncodedImageModel, files: Sequence[bytes], batch_size: int, endpoint: Endpoint, timeout_s: float = 60.0
) -> PreparedRequest:
    """Requests of ``batch_size`` encoded files each (a BYTES tensor [N, 1]) for an image
    ensemble, going round ``files`` as perf_analyzer goes round its input data: request k holds
    files k·N … k·N+N-1 (modulo their number), and there are as many requests as it takes for
    every file to be sent equally often."""
    if not files:
        raise ClientError("no image files to send")
    if batch_size < 1 or (model.max_batch_size and batch_size > model.max_batch_size):
        raise ClientError(
            f"batch of {batch_size} is not within 1..{model.max_batch_size}, model {model.name!r}'s max_batch_size"
        )
    bodies, json_sizes = [], []
    for start in range(0, math.lcm(len(files), batch_size), batch_size):
        group = np.array([files[(start + i) % len(files)] for i in range(batch_size)], dtype=np.object_)
        body, json_size = _serialise(endpoint.protocol, model=model.name, input_name=model.input_name,
                                     output_name=model.output_name, datatype="BYTES", tensor=group.reshape(-1, 1))
        bodies.append(body)
        json_sizes.append(json_size)
    return PreparedRequest(
        endpoint=endpoint, model=model.name, output_name=model.output_name, batch_size=batch_size,
        num_classes=model.num_classes, bodies=tuple(bodies),
        json_sizes=None if endpoint.protocol == "grpc" else tuple(json_sizes), timeout_s=timeout_s,
    )


def _serialise(
    protocol: Protocol, *, model: str, input_name: str, output_name: str, datatype: str, tensor: np.ndarray
) -> tuple[bytes, int | None]:
    """One request's body, and for HTTP the length of its JSON header."""
    if protocol == "grpc":
        request = service_pb2.ModelInferRequest(model_name=model)
        entry = request.inputs.add()
        entry.name, entry.datatype = input_name, datatype
        entry.shape.extend(tensor.shape)
        request.outputs.add().name = output_name
        # BYTES elements go as Triton's raw form: each one's 4-byte little-endian length, then it.
        raw = serialize_byte_tensor(tensor).item() if datatype == "BYTES" else tensor.tobytes()
        request.raw_input_contents.append(raw)
        return request.SerializeToString(), None
    if protocol == "http":
        import tritonclient.http as httpclient

        entry = httpclient.InferInput(input_name, list(tensor.shape), datatype)
        entry.set_data_from_numpy(tensor, binary_data=True)
        output = httpclient.InferRequestedOutput(output_name, binary_data=True)
        body, json_size = httpclient.InferenceServerClient.generate_request_body([entry], outputs=[output])
        return bytes(body), json_size
    raise ClientError(f"unknown protocol {protocol!r}; choose http or grpc")


def check_logits(request: PreparedRequest, logits: np.ndarray | None) -> None:
    expected = (request.batch_size, request.num_classes)
    if logits is None or logits.shape != expected:
        raise ClientError(
            f"model {request.model!r} answered {None if logits is None else list(logits.shape)}, "
            f"expected {list(expected)}"
        )


class GrpcSender:
    """Sends one prepared request over a gRPC channel of its own."""

    def __init__(self, request: PreparedRequest) -> None:
        self._request = request
        self._channel = request.endpoint.grpc_channel(GRPC_OPTIONS)
        # No serializers: the body is already the serialised protobuf, the answer stays bytes.
        self._call = self._channel.unary_unary(MODEL_INFER_METHOD)
        self._metadata = request.endpoint.grpc_metadata or None
        self._bodies = itertools.cycle(request.bodies)

    def send(self) -> RequestTimes:
        request = self._request
        body = next(self._bodies)
        began = time.perf_counter_ns()
        try:
            answer = self._call(body, timeout=request.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise ClientError(f"inference on {request.model!r} failed: {grpc_reason(exc)}") from None
        answered = time.perf_counter_ns()
        read_grpc_answer(request, answer)
        return began, began, answered, time.perf_counter_ns()

    def close(self) -> None:
        self._channel.close()


def read_grpc_answer(request: PreparedRequest, answer: bytes) -> np.ndarray:
    """The logits in a serialised ModelInferResponse, checked against the request."""
    logits = grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(answer)).as_numpy(request.output_name)
    check_logits(request, logits)
    return logits


def grpc_reason(exc: grpc.RpcError) -> str:
    # An RpcError's str() is a multi-line debug dump; details() is gRPC's one message.
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return first_line(ClientError(details)) if details else first_line(exc)


class HttpSender:
    """Posts one prepared request over a keep-alive HTTP connection of its own."""

    def __init__(self, request: PreparedRequest) -> None:
        import tritonclient.http as httpclient

        self._request = request
        self._connection = request.endpoint.http_connection(timeout_s=request.timeout_s)
        self._path = f"/v2/models/{request.model}/infer"
        headers = {**request.endpoint.http_headers, "Content-Type": "application/octet-stream"}
        self._requests = itertools.cycle([
            (body, {**headers, "Inference-Header-Content-Length": str(json_size)})
            for body, json_size in zip(request.bodies, request.json_sizes or (), strict=True)
        ])
        self._parse = httpclient.InferenceServerClient.parse_response_body

    def send(self) -> RequestTimes:
        request = self._request
        body, headers = next(self._requests)
        began = time.perf_counter_ns()
        try:
            self._connection.request("POST", self._path, body, headers)
            sent = time.perf_counter_ns()
            response = self._connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            raise ClientError(f"inference on {request.model!r} failed: {first_line(exc)}") from None
        answered = time.perf_counter_ns()
        if response.status != 200:
            raise ClientError(
                f"inference on {request.model!r} failed: HTTP {response.status} "
                f"{first_line(ClientError(answer.decode(errors='replace')))}"
            )
        header_length = response.getheader("Inference-Header-Content-Length")
        result = self._parse(answer, header_length=None if header_length is None else int(header_length))
        check_logits(request, result.as_numpy(request.output_name))
        return began, sent, answered, time.perf_counter_ns()

    def close(self) -> None:
        self._connection.close()



class RetryingSender:
    """A sender that reconnects and tries a failed request again as `retries` allows; a request
    that finally succeeds is timed from its last try. The time of each failed try is appended
    to `failures`."""

    def __init__(
        self, request: PreparedRequest, *, retries: Retries, stopping: threading.Event, failures: list[int]
    ) -> None:
        self._request = request
        self._retries = retries
        self._stopping = stopping
        self._failures = failures
        self._sender: RequestSender = request.open()

    def send(self) -> RequestTimes:
        # Looked up on each try: a retry replaces the sender.
        return self._retries.call(lambda: self._sender.send(), stopping=self._stopping, before_retry=self._reconnect)

    def _reconnect(self) -> None:
        self._failures.append(time.perf_counter_ns())
        self._sender.close()
        self._sender = self._request.open()

    def close(self) -> None:
        self._sender.close()
