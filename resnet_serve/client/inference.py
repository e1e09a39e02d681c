"""A protocol-neutral client for one served classifier.

Like Triton's image_client example, it asks the server for the model's metadata and config and
checks them before sending traffic; HTTP and gRPC differ only in the tritonclient module used.
The preprocessing and class names come from the config's parameters, which the repository
writer put there, so a caller never has to be told how to prepare an image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient._plugin import InferenceServerClientPlugin

from resnet_serve.client.connection import ConnectionOptions, Endpoint, Protocol, parse_endpoint
from resnet_serve.errors import ClientError, first_line
from resnet_serve.preprocessing import Preprocessing
from resnet_serve.triton import ADMIN_KEY_HEADER


@dataclass(frozen=True)
class ServedModel:
    """What the server says about a model, checked against what a classifier needs."""

    name: str
    version: str
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]
    max_batch_size: int
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    parameters: dict[str, str]

    def check_batch(self, batch: np.ndarray) -> None:
        """Raise ClientError unless ``batch`` is [N, C, H, W] of this model's shape and size."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ClientError(
                f"model {self.name!r} takes batches of {list(self.input_shape)}, got {list(batch.shape)}"
            )
        if self.max_batch_size and batch.shape[0] > self.max_batch_size:
            raise ClientError(
                f"batch of {batch.shape[0]} exceeds model {self.name!r}'s max_batch_size {self.max_batch_size}"
            )


@dataclass(frozen=True)
class ModelStatistics:
    """Triton's cumulative statistics for one model; differences of two give a window's figures.

    For an ensemble, ``steps`` holds its composing models' statistics (name and figures, in
    step order): Triton times the queue and compute of an ensemble's requests only in them.
    """

    inference_count: int
    execution_count: int
    success_count: int
    success_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    steps: tuple[tuple[str, ModelStatistics], ...] = ()

    def __sub__(self, other: ModelStatistics) -> ModelStatistics:
        counters = {field: getattr(self, field) - getattr(other, field) for field in _COUNTERS}
        steps = tuple((name, mine - theirs) for (name, mine), (_, theirs) in zip(self.steps, other.steps, strict=True))
        return ModelStatistics(**counters, steps=steps)


_COUNTERS = tuple(f for f in ModelStatistics.__dataclass_fields__ if f != "steps")


def _module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ClientError(f"unknown protocol {protocol!r}; choose http or grpc")
    return module


class _Headers(InferenceServerClientPlugin):
    """Adds the endpoint's headers to every tritonclient call (a call's own headers win)."""

    def __init__(self, headers: dict[str, str] | tuple[tuple[str, str], ...]) -> None:
        self._headers = dict(headers)

    def __call__(self, request: Any) -> None:
        request.headers = {**self._headers, **(request.headers or {})}


class InferenceClient:
    """A connection to one model on one Triton server (the only ready one when ``model`` is None).

    ``url`` is `[scheme://]host[:port]`; `https://` and `grpcs://` mean TLS, with ``connection``'s
    CA, headers and admin key (see `client.connection`). Not thread-safe (the HTTP client is
    not): concurrent callers open one client each.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        protocol: Protocol = "http",
        url: str | None = None,
        timeout_s: float = 60.0,
        connection: ConnectionOptions | None = None,
    ) -> None:
        self._tc = _module(protocol)
        self.endpoint = parse_endpoint(url, protocol=protocol, options=connection)
        self.protocol = protocol
        self.url = self.endpoint.address
        self._timeout_s = timeout_s
        if self.endpoint.tls:
            self.endpoint.check_tls(timeout_s=timeout_s)
        try:
            self._client = self._open(self.endpoint, timeout_s=timeout_s)
            ready = self._client.is_server_ready()
        except Exception as exc:  # tritonclient raises many types for one cause: nobody answered
            raise ClientError(f"no Triton server answering at {self.endpoint} ({first_line(exc)})") from None
        if not ready:
            raise ClientError(f"the Triton server at {self.endpoint} is not ready")
        self.model = self._describe(model or self._only_model())

    def _open(self, endpoint: Endpoint, *, timeout_s: float) -> Any:
        if endpoint.protocol == "http":
            from gevent import ssl as gevent_ssl

            tls = {"ssl": True, "insecure": endpoint.options.insecure,
                   # gevent's own kind of context; it ignores the CA bundle tritonclient would pass.
                   "ssl_context_factory": lambda **_: endpoint.ssl_context(gevent_ssl.create_default_context)}
            client = self._tc.InferenceServerClient(
                endpoint.address, connection_timeout=timeout_s, network_timeout=timeout_s,
                **(tls if endpoint.tls else {}),
            )
            headers: Any = endpoint.http_headers
        else:
            ca_cert = endpoint.options.ca_cert
            # Channel arguments replace tritonclient's own, so its message-size limits come along.
            channel_args = [("grpc.max_send_message_length", self._tc.MAX_GRPC_MESSAGE_SIZE),
                            ("grpc.max_receive_message_length", self._tc.MAX_GRPC_MESSAGE_SIZE),
                            *endpoint.grpc_channel_options]
            client = self._tc.InferenceServerClient(
                endpoint.address, ssl=endpoint.tls, root_certificates=str(ca_cert) if ca_cert else None,
                channel_args=channel_args if endpoint.grpc_channel_options else None,
            )
            headers = endpoint.grpc_metadata
        if headers:
            client.register_plugin(_Headers(headers))
        return client

    def _only_model(self) -> str:
        # An export also serves <name>-preprocess and <name>-image, which take encoded files:
        # only models that take a float image count here.
        ready = self.ready_models()
        classifiers = [name for name in ready if self._takes_float_images(name)]
        if len(classifiers) != 1:
            raise ClientError(
                f"name the model to use (--model): the server at {self.endpoint} has "
                f"{len(classifiers)} ready models that take float images"
                f"{': ' + ', '.join(classifiers) if classifiers else ''} (ready: {', '.join(ready) or 'none'})"
            )
        return classifiers[0]

    def _takes_float_images(self, name: str) -> bool:
        config = self._json(self._client.get_model_config, name)
        inputs = config.get("config", config).get("input", [])
        return len(inputs) == 1 and inputs[0].get("data_type") == "TYPE_FP32" and len(inputs[0].get("dims", [])) == 3

    def _describe(self, name: str) -> ServedModel:
        try:
            ready = self._client.is_model_ready(name)
        except Exception as exc:
            raise ClientError(f"cannot ask {self.endpoint} about model {name!r}: {first_line(exc)}") from None
        if not ready:
            raise ClientError(f"model {name!r} is not ready on {self.endpoint}{self._ready_models_note()}")
        config = self._json(self._client.get_model_config, name)
        config = config.get("config", config)  # gRPC wraps it, HTTP does not
        inputs, outputs = config.get("input", []), config.get("output", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise ClientError(
                f"model {name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "a classifier has one of each"
            )
        if inputs[0].get("data_type") == "TYPE_STRING":
            raise ClientError(
                f"model {name!r} takes encoded image files, not float images: send it files "
                "(bench --images DIR, classify --server-side)"
            )
        dims = tuple(int(d) for d in inputs[0].get("dims", []))
        out_dims = [int(d) for d in outputs[0].get("dims", [])]
        if not int(config.get("max_batch_size", 0)) and dims[:1] == (-1,) and out_dims[:1] == [-1]:
            # A model that does not batch in Triton but takes any batch itself (dims [-1, C, H, W],
            # what OpenVINO serves from a dynamic-batch file with max_batch_size 0).
            dims, out_dims = dims[1:], out_dims[1:]
        if len(dims) != 3 or len(out_dims) != 1:
            raise ClientError(
                f"model {name!r} takes {list(dims)} and returns {out_dims}; "
                "expected an image [C, H, W] and a vector of class scores"
            )
        parameters = {
            key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()
        }
        if "preprocessing" not in parameters:
            raise ClientError(
                f"model {name!r} carries no 'preprocessing' parameter; "
                "was its repository entry written by resnet-serve export?"
            )
        preprocessing = Preprocessing.from_dict(json.loads(parameters["preprocessing"]))
        if preprocessing.input_shape != dims:
            raise ClientError(
                f"model {name!r} takes {list(dims)} but its preprocessing makes "
                f"{list(preprocessing.input_shape)}"
            )
        class_names = json.loads(parameters.get("class_names", "[]")) or [
            str(i) for i in range(out_dims[0])
        ]
        return ServedModel(
            name=name,
            version=str(self._json(self._client.get_model_metadata, name).get("versions", [""])[-1]),
            input_name=inputs[0]["name"],
            output_name=outputs[0]["name"],
            input_shape=dims,  # type: ignore[arg-type]
            max_batch_size=int(config.get("max_batch_size", 0)),
            num_classes=out_dims[0],
            class_names=class_names,
            preprocessing=preprocessing,
            parameters=parameters,
        )

    def _json(self, method: Any, *args: Any, **options: Any) -> dict:
        try:
            if self.protocol == "grpc":
                return method(*args, as_json=True, **options)
            return method(*args, **options)
        except Exception as exc:
            if "restricted" in str(exc) and ADMIN_KEY_HEADER in str(exc):
                raise ClientError(
                    f"the server at {self.endpoint} restricts this API to holders of its admin key: name the "
                    "model (--model) or give the key (--admin-key or RESNET_SERVE_ADMIN_KEY)"
                ) from None
            raise ClientError(f"{self.endpoint}: {first_line(exc)}") from None

    def ready_models(self) -> list[str]:
        """The server's ready models, from the statistics endpoint, which Triton leaves open
        (it names every loaded model) and the readiness of each; the repository index, which
        needs the admin key where the server has one, only where statistics are restricted too."""
        try:
            stats = self._json(self._client.get_inference_statistics)
            names = sorted({entry["name"] for entry in stats.get("model_stats", [])})
        except ClientError:
            index = self._json(self._client.get_model_repository_index, headers=self.endpoint.admin_headers or None)
            entries = index.get("models", []) if isinstance(index, dict) else index
            return sorted(e["name"] for e in entries if e.get("state") == "READY")
        return [name for name in names if self._client.is_model_ready(name)]

    def _ready_models_note(self) -> str:
        """"; ready models: …" for an error message, or nothing where the list is restricted."""
        try:
            return f"; ready models: {', '.join(self.ready_models()) or 'none'}"
        except ClientError:
            return ""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed float32 batch of shape [N, C, H, W]."""
        model = self.model
        model.check_batch(batch)
        request = self._tc.InferInput(model.input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        output = self._tc.InferRequestedOutput(model.output_name)
        try:
            result = self._client.infer(model.name, [request], outputs=[output])
        except Exception as exc:
            raise ClientError(f"inference on {model.name!r} failed: {first_line(exc)}") from None
        logits = result.as_numpy(model.output_name)
        if logits is None or logits.shape != (batch.shape[0], model.num_classes):
            raise ClientError(
                f"model {model.name!r} answered {None if logits is None else list(logits.shape)}, "
                f"expected {[batch.shape[0], model.num_classes]}"
            )
        return logits

    def statistics(self) -> ModelStatistics:
        return self.statistics_of(self.model.name)

    def statistics_of(self, name: str) -> ModelStatistics:
        """Triton's cumulative statistics of model ``name`` (any model on this server)."""
        stats = self._json(self._client.get_inference_statistics, name)
        model_stats = stats.get("model_stats", [])
        if not model_stats:
            raise ClientError(f"the server returned no statistics for {name!r}")
        entry = model_stats[0]
        inference = entry.get("inference_stats", {})

        def ns(key: str) -> int:
            return int(inference.get(key, {}).get("ns", 0))

        return ModelStatistics(
            inference_count=int(entry.get("inference_count", 0)),
            execution_count=int(entry.get("execution_count", 0)),
            success_count=int(inference.get("success", {}).get("count", 0)),
            success_ns=ns("success"),
            queue_ns=ns("queue"),
            compute_input_ns=ns("compute_input"),
            compute_infer_ns=ns("compute_infer"),
            compute_output_ns=ns("compute_output"),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def rank_classes(logits: np.ndarray, class_names: list[str], *, k: int) -> list[list[Prediction]]:
    """Softmax over each row of logits, then the k most probable classes with their labels."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [
        [Prediction(int(i), class_names[int(i)], float(row[i])) for i in indices]
        for row, indices in zip(probabilities, order, strict=True)
    ]
