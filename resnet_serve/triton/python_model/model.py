"""Triton python-backend model that runs an ONNX or OpenVINO model file of its version folder.

One template, two uses:
- the `python-onnxruntime` target copies it into `<repository>/<name>/<version>/model.py`, where
  it runs the `model.onnx` beside it in onnxruntime;
- `resnet-serve serve` links it into the proxy it builds for each `onnxruntime_onnx` and
  `openvino` entry (see `resnet_serve.triton.proxy`), whose config names the runtime and the
  file in the parameters `proxy_runtime` and `proxy_model_file`.

It runs in Triton's python stub, not in resnet-serve's interpreter: it imports only numpy, the
runtime it needs and the stub's own `triton_python_backend_utils`. The embedded server launcher
makes the stub's interpreter start from resnet-serve's virtualenv (see
`resnet_serve.triton.server`), so the repository itself holds no machine paths.

It reads the settings the official backends read, under the same keys, so an entry means the
same in the official container and here:
- onnxruntime: the parameters `intra_op_thread_count`, `inter_op_thread_count`,
  `execution_mode`, `enable_mem_arena`, `enable_mem_pattern`,
  `session.use_device_allocator_for_initializers`, `memory.enable_memory_arena_shrinkage`, and
  `optimization.graph.level`;
- OpenVINO: the parameters `TARGET_DEVICE`, `CPU_EXTENSION_PATH`, `INFERENCE_NUM_THREADS`,
  `COMPILATION_NUM_THREADS`, `HINT_BF16`, `NUM_STREAMS`, `PERFORMANCE_HINT` and
  `RESHAPE_IO_LAYERS`. Like the official backend it sets no inference precision unless
  `HINT_BF16` asks for BF16, so on a CPU with BF16 instructions OpenVINO computes in BF16.
Without a thread count, instances share the cores instead of each taking all of them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

RUNTIME_PARAMETER = "proxy_runtime"
MODEL_FILE_PARAMETER = "proxy_model_file"
# The values Triton's ParseBoolValue (used by the onnxruntime backend) accepts.
_TRUE = {"1", "true", "on"}
_FALSE = {"0", "false", "off"}


class TritonPythonModel:
    """Triton makes `count` of these per instance group, each in its own stub process."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "")
            for key, value in config.get("parameters", {}).items()
        }
        if not config.get("max_batch_size"):
            # execute() concatenates and splits requests along the first (batch) dimension.
            raise pb_utils.TritonModelException("this model needs max_batch_size > 0")
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.output_dtypes = [
            pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]
        ]

        # Without these parameters: the python-onnxruntime target's model.onnx.
        runtime_name = parameters.get(RUNTIME_PARAMETER) or "onnxruntime"
        if runtime_name not in ("onnxruntime", "openvino"):
            raise pb_utils.TritonModelException(
                f"{RUNTIME_PARAMETER} must be onnxruntime or openvino, got {runtime_name!r}"
            )
        version_folder = os.path.join(args["model_repository"], args["model_version"])
        model_path = os.path.join(version_folder, parameters.get(MODEL_FILE_PARAMETER) or "model.onnx")
        if not os.path.exists(model_path):
            raise pb_utils.TritonModelException(f"model file {model_path} does not exist")
        instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
        # Instances run side by side, so by default they share the cores instead of each
        # spawning one thread per core and fighting over them.
        default_threads = max(1, len(os.sched_getaffinity(0)) // instances)
        runtime_class = OnnxRuntimeModel if runtime_name == "onnxruntime" else OpenVinoModel
        self.runtime = runtime_class(
            model_path, config=config, parameters=parameters, default_threads=default_threads
        )
        # A config that names tensors, or gives shapes, the model file lacks would fail on every
        # request; fail the model load instead so the server reports it once, at startup.
        max_batch_size = int(config["max_batch_size"])
        problems = _shape_problems(config["input"], self.runtime.input_shapes, "input", max_batch_size) + \
            _shape_problems(config["output"], self.runtime.output_shapes, "output", max_batch_size)
        if problems:
            raise pb_utils.TritonModelException(
                f"{model_path} does not match the model config: {'; '.join(problems)}"
            )
        self.error_prefix = f"{runtime_name} failed"

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run every request of this dynamic batch in one run of the runtime."""
        batches = [
            [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names]
            for request in requests
        ]
        try:
            outputs = self._run(batches)
        except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
            if len(batches) == 1:
                return [self._error(error)]
            # One bad request must not fail the others that Triton batched with it: retry one
            # by one so each gets its own answer or its own error.
            return [self._answer_alone(batch) for batch in batches]
        return [self._response(per_request) for per_request in outputs]

    def _answer_alone(self, batch: list[np.ndarray]) -> Any:
        try:
            return self._response(self._run([batch])[0])
        except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
            return self._error(error)

    def _error(self, error: Exception) -> Any:
        # onnxruntime calls an input it cannot take (a shape or type the model does not accept,
        # which Triton lets through where the config has -1 dims) InvalidArgument: the client's
        # error, answered as such (HTTP 400). Any other failure is the model's (HTTP 500).
        invalid = type(error).__name__ == "InvalidArgument"
        code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(f"{self.error_prefix}: {error}", code)
        )

    def _run(self, batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        if len(batches) == 1:
            return [self.runtime.run(dict(zip(self.input_names, batches[0], strict=True)),
                                     self.output_names)]
        feeds = {
            name: np.concatenate([batch[i] for batch in batches])
            for i, name in enumerate(self.input_names)
        }
        results = self.runtime.run(feeds, self.output_names)
        split_at = np.cumsum([len(batch[0]) for batch in batches])[:-1]
        per_output = [np.split(result, split_at) for result in results]
        return [[outputs[r] for outputs in per_output] for r in range(len(batches))]

    def _response(self, outputs: list[np.ndarray]) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
                for name, value, dtype in zip(self.output_names, outputs, self.output_dtypes, strict=True)
            ]
        )

    def finalize(self) -> None:
        self.runtime = None


class OnnxRuntimeModel:
    """An ONNX file in an onnxruntime CPU session set up like Triton's onnxruntime backend."""

    def __init__(
        self, path: str, *, config: dict[str, Any], parameters: dict[str, str], default_threads: int
    ) -> None:
        import onnxruntime as ort

        if os.path.isdir(path):
            # The onnxruntime backend's rule: a model folder holds model.onnx (and its data).
            path = os.path.join(path, "model.onnx")
        options = ort.SessionOptions()
        intra_op = parameters.get("intra_op_thread_count")
        # "0" is the backend's "let onnxruntime choose"; only an absent key gets our default.
        options.intra_op_num_threads = int(intra_op) if intra_op else default_threads
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count") or 0)
        execution_mode = parameters.get("execution_mode") or "0"
        if execution_mode not in ("0", "1"):
            raise pb_utils.TritonModelException(f"execution_mode must be 0 or 1, got {execution_mode!r}")
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if execution_mode == "1" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
        options.graph_optimization_level = {
            -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if "enable_mem_arena" in parameters:
            options.enable_cpu_mem_arena = _flag(parameters, "enable_mem_arena")
        if "enable_mem_pattern" in parameters:
            options.enable_mem_pattern = _flag(parameters, "enable_mem_pattern")
        key = "session.use_device_allocator_for_initializers"
        if key in parameters:
            options.add_session_config_entry(key, parameters[key])
        self.run_options = ort.RunOptions()
        key = "memory.enable_memory_arena_shrinkage"
        if key in parameters:
            self.run_options.add_run_config_entry(key, parameters[key])
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.output_shapes = {o.name: o.shape for o in self.session.get_outputs()}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        return self.session.run(output_names, feeds, self.run_options)


class OpenVinoModel:
    """A model file read and compiled by OpenVINO with the official OpenVINO backend's settings."""

    def __init__(
        self, path: str, *, config: dict[str, Any], parameters: dict[str, str], default_threads: int
    ) -> None:
        import openvino
        import openvino.properties as props
        import openvino.properties.hint as hints
        import openvino.properties.streams as streams

        core = openvino.Core()
        if parameters.get("CPU_EXTENSION_PATH"):
            core.add_extension(parameters["CPU_EXTENSION_PATH"])
        model = core.read_model(path)
        if parameters.get("RESHAPE_IO_LAYERS", "").lower() == "yes":
            batch = [-1] if config.get("max_batch_size") else []
            model.reshape({t["name"]: batch + [int(d) for d in t["dims"]] for t in config["input"]})
        properties: dict[str, Any] = {
            props.inference_num_threads: int(parameters.get("INFERENCE_NUM_THREADS") or default_threads)
        }
        if parameters.get("COMPILATION_NUM_THREADS"):
            properties[props.compilation_num_threads] = int(parameters["COMPILATION_NUM_THREADS"])
        if parameters.get("HINT_BF16"):
            if parameters["HINT_BF16"].lower() != "yes":
                raise pb_utils.TritonModelException(
                    f"expected the parameter 'HINT_BF16' to be YES, got {parameters['HINT_BF16']}"
                )
            properties[hints.inference_precision] = openvino.Type.bf16
        if parameters.get("NUM_STREAMS"):
            value = parameters["NUM_STREAMS"].lower()
            if value in ("auto", "numa"):
                properties[streams.num] = getattr(streams.Num, value.upper())
            elif value.isdigit():
                properties[streams.num] = int(value)
            else:
                raise pb_utils.TritonModelException(
                    f"expected the parameter 'NUM_STREAMS' to be either AUTO/NUMA/<int_value>, "
                    f"got {value}"
                )
        if parameters.get("PERFORMANCE_HINT"):
            value = parameters["PERFORMANCE_HINT"].upper()
            if value not in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"):
                raise pb_utils.TritonModelException(
                    "expected the parameter 'PERFORMANCE_HINT' to be "
                    f"LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got {value.lower()}"
                )
            properties[hints.performance_mode] = getattr(hints.PerformanceMode, value)
        device = (parameters.get("TARGET_DEVICE") or "CPU").upper()
        compiled = core.compile_model(model, device, properties)
        self.request = compiled.create_infer_request()
        # Tensors may carry several names; the config may use any of them.
        self.input_shapes = _named_shapes(compiled.inputs)
        self.output_shapes = _named_shapes(compiled.outputs)
        self.outputs = {name: port for port in compiled.outputs for name in port.get_names()}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        # share_inputs: the request reads the stub's arrays without copying them; the outputs are
        # copied because the request reuses their buffers on the next call.
        results = self.request.infer(feeds, share_inputs=True)
        return [results[self.outputs[name]] for name in output_names]


def _named_shapes(ports: Any) -> dict[str, list[int | None]]:
    return {
        name: [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        for port in ports for name in port.get_names()
    }


def _flag(parameters: dict[str, str], key: str) -> bool:
    value = parameters[key].lower()
    if value not in _TRUE | _FALSE:
        raise pb_utils.TritonModelException(f"parameter {key!r} must be a boolean, got {value!r}")
    return value in _TRUE


def _shape_problems(
    tensors: list[dict[str, Any]], shapes: dict[str, list[Any]], kind: str, max_batch_size: int
) -> list[str]:
    """What is wrong between the config's tensors and the model file's (None/str = any size)."""
    problems = []
    for tensor in tensors:
        name = tensor["name"]
        if "reshape" in tensor:
            # Feeding the model another shape than the request's is not implemented here.
            problems.append(f"{kind} {name!r} has a `reshape`, which this model does not support")
            continue
        if name not in shapes:
            problems.append(f"no {kind} {name!r} (it has {sorted(shapes)})")
            continue
        dims = [int(d) for d in tensor["dims"]]
        batch, *model_dims = shapes[name] or [None]
        if len(model_dims) != len(dims) or any(
            isinstance(m, int) and d != -1 and m != d for m, d in zip(model_dims, dims, strict=True)
        ):
            problems.append(f"{kind} {name!r} has shape {shapes[name]}, the config [batch, *{dims}]")
        elif isinstance(batch, int) and batch < max_batch_size:
            problems.append(
                f"{kind} {name!r} has a fixed batch of {batch}, the config's max_batch_size is "
                f"{max_batch_size}"
            )
    return problems
