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

It reads the settings the official backends read, under the same keys, and answers requests as
they do (a failed run fails every request of its batch), so an entry means the same in the
official container and here:
- onnxruntime: the parameters `intra_op_thread_count`, `inter_op_thread_count`,
  `execution_mode`, `enable_mem_arena`, `enable_mem_pattern`,
  `session.use_device_allocator_for_initializers`, `memory.enable_memory_arena_shrinkage`, and
  `optimization.graph.level`;
- OpenVINO: the parameters `TARGET_DEVICE`, `CPU_EXTENSION_PATH`, `INFERENCE_NUM_THREADS`,
  `COMPILATION_NUM_THREADS`, `HINT_BF16`, `NUM_STREAMS`, `PERFORMANCE_HINT` and
  `RESHAPE_IO_LAYERS`. Like the official backend it sets no inference precision unless
  `HINT_BF16` asks for BF16, so on a CPU with BF16 instructions OpenVINO computes in BF16.
  With `max_batch_size` > 0 the batch is fixed to it, and an execution of another total fails
  unless `ENABLE_BATCH_PADDING` is `yes`; padding keeps the backend's stale pad size (see
  `resnet_serve.triton.contract.openvino`).
Without a thread count, instances share the cores instead of each taking all of them.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

RUNTIME_PARAMETER = "proxy_runtime"
MODEL_FILE_PARAMETER = "proxy_model_file"
# The values Triton's ParseBoolValue (used by the onnxruntime backend) accepts.
_TRUE = {"1", "true", "on"}
_STOI = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")
# The config's data types and the OpenVINO element types the backend gives the tensors
# (openvino_utils.cc ModelConfigDataTypeToOpenVINOElement).
_OPENVINO_TYPES = {"TYPE_BOOL": "boolean", "TYPE_UINT8": "u8", "TYPE_UINT16": "u16", "TYPE_UINT32": "u32",
                   "TYPE_UINT64": "u64", "TYPE_INT8": "i8", "TYPE_INT16": "i16", "TYPE_INT32": "i32",
                   "TYPE_INT64": "i64", "TYPE_FP16": "f16", "TYPE_FP32": "f32"}
# onnxruntime's OrtErrorCode numbers, by the name of the Python exception it raises for each.
_ORT_ERROR_CODES = {"Fail": 1, "InvalidArgument": 2, "NoSuchFile": 3, "NoModel": 4, "EngineError": 5,
                    "RuntimeException": 6, "InvalidProtobuf": 7, "ModelLoaded": 8, "NotImplemented": 9,
                    "InvalidGraph": 10, "EPFail": 11}


class TritonPythonModel:
    """Triton makes `count` of these per instance group, each in its own stub process."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "")
            for key, value in config.get("parameters", {}).items()
        }
        self.name = config["name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
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
        proxy = RUNTIME_PARAMETER in parameters
        if not proxy and not self.max_batch_size:
            # The python-onnxruntime target's own rule: execute() batches along the first dimension.
            raise pb_utils.TritonModelException("this model needs max_batch_size > 0")
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
        # The OpenVINO backend runs every execution at max_batch_size images (ov::set_batch), so
        # the request-time rules of resnet_serve.triton.contract.openvino apply.
        self.fixed_batch = runtime_name == "openvino" and self.max_batch_size > 0
        self.batch_padding = parameters.get("ENABLE_BATCH_PADDING", "").lower() == "yes"
        # The backend's batch_pad_size_: assigned while an execution's running total differs from
        # max_batch_size, and never reset (openvino.cc:1051), which is what server issue #7363 is.
        self.pad = 0
        if not proxy:
            # The python-onnxruntime target's own check; proxies were checked against the contract.
            problems = _shape_problems(config["input"], self.runtime.input_shapes, "input", self.max_batch_size) + \
                _shape_problems(config["output"], self.runtime.output_shapes, "output", self.max_batch_size)
            if problems:
                raise pb_utils.TritonModelException(
                    f"{model_path} does not match the model config: {'; '.join(problems)}"
                )
        self.error_prefix = "onnx runtime error" if runtime_name == "onnxruntime" else "openvino error"

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run every request of this dynamic batch in one run of the runtime, as the backend does:
        a failure of that run is every request's answer."""
        batches = [
            [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names]
            for request in requests
        ]
        if self.fixed_batch:
            return self._execute_fixed_batch(batches)
        try:
            outputs = self._run(batches)
        except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
            return [self._runtime_error(error) for _ in batches]
        return [self._response(per_request) for per_request in outputs]

    def _execute_fixed_batch(self, batches: list[list[np.ndarray]]) -> list[Any]:
        """openvino.cc ProcessRequests with max_batch_size > 0 (see the module notes)."""
        limit = self.max_batch_size
        total = 0
        for batch in batches:
            total += len(batch[0])
            if total == limit:
                continue
            if not self.batch_padding:
                message = (
                    f"expected requests with batch size '{limit}', got '{total}'... this error can be avoided "
                    "by setting 'ENABLE_BATCH_PADDING' parameter in model configuration to 'YES' at a "
                    "performance cost."
                )
                return [_error(message, pb_utils.TritonError.INTERNAL) for _ in batches]
            self.pad = limit - total
        if total > limit:
            message = f"batch size {total} for '{self.name}', max allowed is {limit}"
            return [_error(message, pb_utils.TritonError.INTERNAL) for _ in batches]
        feeds = {}
        for i, name in enumerate(self.input_names):
            joined = np.concatenate([batch[i] for batch in batches])
            if self.pad:
                # The backend zero-fills its [max_batch_size, ...] tensor and copies the requests in.
                padded = np.zeros((limit, *joined.shape[1:]), dtype=joined.dtype)
                padded[:total] = joined
                joined = padded
            feeds[name] = joined
        try:
            results = self.runtime.run(feeds, self.output_names)
        except Exception as error:  # noqa: BLE001 - a failure is answered, never raised
            return [self._runtime_error(error) for _ in batches]
        rows = limit - self.pad
        responses, offset = [], 0
        for batch in batches:
            size = len(batch[0])
            if offset + size > rows:
                # BackendOutputResponder (backend_output_responder.cc:85-107) on too few rows.
                responses.append(_error(
                    f"failed to split the output tensor '{self.output_names[0]}' in responses: expected batch "
                    f"size of at least {offset + size} in model output, got {rows}",
                    pb_utils.TritonError.UNSUPPORTED,
                ))
            else:
                responses.append(self._response([result[offset:offset + size] for result in results]))
            offset += size
        return responses

    def _runtime_error(self, error: Exception) -> Any:
        # The backends answer a failed run as their own (INTERNAL) error: the onnxruntime backend
        # as "onnx runtime error <code>: <message>" (onnxruntime_utils.h RETURN_IF_ORT_ERROR).
        code = _ORT_ERROR_CODES.get(type(error).__name__)
        prefix = f"{self.error_prefix} {code}" if code is not None else self.error_prefix
        return _error(f"{prefix}: {error}", pb_utils.TritonError.INTERNAL)

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


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


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
        # 0 or less is the backend's "let onnxruntime choose"; only an absent key gets our default.
        options.intra_op_num_threads = max(0, _stoi(intra_op)) if intra_op is not None else default_threads
        options.inter_op_num_threads = max(0, _stoi(parameters.get("inter_op_thread_count")))
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if _stoi(parameters.get("execution_mode")) == 1
            else ort.ExecutionMode.ORT_SEQUENTIAL
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
    """A model file read, prepared and compiled as the official OpenVINO backend does it
    (openvino.cc ValidateInputs/ValidateOutputs and LoadModel): each input takes the config's
    element type (OpenVINO converts), RESHAPE_IO_LAYERS gives it the config's dims, and with
    max_batch_size > 0 the batch is fixed to max_batch_size. The parameters' values were checked
    against the backend contract when the proxy was built."""

    def __init__(
        self, path: str, *, config: dict[str, Any], parameters: dict[str, str], default_threads: int
    ) -> None:
        import openvino
        import openvino.properties as props
        import openvino.properties.hint as hints
        import openvino.properties.streams as streams
        from openvino.preprocess import PrePostProcessor

        core = openvino.Core()
        if parameters.get("CPU_EXTENSION_PATH"):
            core.add_extension(parameters["CPU_EXTENSION_PATH"])
        model = core.read_model(path)
        max_batch_size = int(config.get("max_batch_size", 0))
        processor = PrePostProcessor(model)
        reshape = parameters.get("RESHAPE_IO_LAYERS", "").lower() == "yes"
        for tensor in config["input"]:
            prepared = processor.input(tensor["name"]).tensor()
            prepared.set_element_type(getattr(openvino.Type, _OPENVINO_TYPES[tensor["data_type"]]))
            if reshape:
                shape = model.input(tensor["name"]).get_partial_shape()
                for index, dim in enumerate(tensor["dims"], start=1 if max_batch_size else 0):
                    shape[index] = openvino.Dimension(int(dim)) if int(dim) > 0 else openvino.Dimension()
                prepared.set_shape(shape)
            if max_batch_size:
                prepared.set_layout(openvino.Layout("N..."))
        for tensor in config["output"]:
            processor.output(tensor["name"]).tensor().set_element_type(
                getattr(openvino.Type, _OPENVINO_TYPES[tensor["data_type"]])
            )
        model = processor.build()
        if max_batch_size:
            openvino.set_batch(model, max_batch_size)
        properties: dict[str, Any] = {
            props.inference_num_threads: int(parameters.get("INFERENCE_NUM_THREADS") or default_threads)
        }
        if parameters.get("COMPILATION_NUM_THREADS"):
            properties[props.compilation_num_threads] = int(parameters["COMPILATION_NUM_THREADS"])
        if parameters.get("HINT_BF16"):
            properties[hints.inference_precision] = openvino.Type.bf16
        streams_value = parameters.get("NUM_STREAMS", "").lower()
        if streams_value in ("auto", "numa"):
            properties[streams.num] = getattr(streams.Num, streams_value.upper())
        elif streams_value:
            properties[streams.num] = int(streams_value)
        if parameters.get("PERFORMANCE_HINT"):
            properties[hints.performance_mode] = getattr(hints.PerformanceMode, parameters["PERFORMANCE_HINT"].upper())
        device = (parameters.get("TARGET_DEVICE") or "CPU").upper()
        compiled = core.compile_model(model, device, properties)
        self.request = compiled.create_infer_request()
        self.outputs = {port.get_any_name(): port for port in compiled.outputs}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        # share_inputs: the request reads the stub's arrays without copying them; the outputs are
        # copied because the request reuses their buffers on the next call.
        results = self.request.infer(feeds, share_inputs=True)
        return [results[self.outputs[name]] for name in output_names]


def _flag(parameters: dict[str, str], key: str) -> bool:
    return parameters[key].lower() in _TRUE


def _stoi(text: str | None) -> int:
    """std::stoi, as the backend parses its integers: "4x" is 4 (a value it refuses never gets
    here: proxies are checked against the contract first)."""
    found = _STOI.match(text or "")
    return int(found.group(0)) if found else 0


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
