"""What Triton's onnxruntime backend refuses (triton-inference-server/onnxruntime_backend, read
at r24.10 and r26.06, with the parameter parsers of triton-inference-server/backend)."""

from __future__ import annotations

from collections.abc import Iterator

from tritonclient.grpc import model_config_pb2

from resnet_serve.triton.contract.core import shape_text
from resnet_serve.triton.contract.facts import EntryFacts
from resnet_serve.triton.contract.rules import Rule, Source
from resnet_serve.triton.contract.signatures import ModelSignature, read_onnx_signature, stoi

__all__ = ["BOOL_VALUES", "ONNXRUNTIME_RULES", "TENSORRT_ACCELERATOR_KEYS", "compare_dims", "onnx_signatures"]

_REPO = "onnxruntime_backend"
_ORT = "src/onnxruntime.cc"
_UTILS = "src/onnxruntime_utils.cc"
_NEWEST = "r26.06"
_ONNXRUNTIME = frozenset({"onnxruntime"})
_SUPPORTED = frozenset({"TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
                        "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
                        "TYPE_STRING"})
# backend_common.cc ParseBoolValue, case-insensitive.
BOOL_VALUES = frozenset({"true", "on", "1", "false", "off", "0"})
# The TensorRT execution accelerator's keys and how each value is parsed (onnxruntime.cc:452-684).
TENSORRT_ACCELERATOR_KEYS: dict[str, str] = {
    "precision_mode": "precision", "max_workspace_size_bytes": "int", "trt_max_partition_iterations": "int",
    "trt_min_subgraph_size": "int", "int8_calibration_table_name": "text",
    "int8_use_native_calibration_table": "bool", "trt_dla_enable": "bool", "trt_dla_core": "int",
    "trt_engine_cache_enable": "bool", "trt_engine_cache_path": "text", "trt_engine_cache_prefix": "text",
    "trt_dump_subgraphs": "bool", "trt_force_sequential_engine_build": "bool",
    "trt_context_memory_sharing_enable": "bool", "trt_layer_norm_fp32_fallback": "bool",
    "trt_timing_cache_enable": "bool", "trt_timing_cache_path": "text", "trt_force_timing_cache": "bool",
    "trt_detailed_build_log": "bool", "trt_build_heuristics_enable": "bool", "trt_sparsity_enable": "bool",
    "trt_builder_optimization_level": "int", "trt_auxiliary_streams": "int", "trt_tactic_sources": "text",
    "trt_extra_plugin_lib_paths": "text", "trt_profile_min_shapes": "text", "trt_profile_max_shapes": "text",
    "trt_profile_opt_shapes": "text", "trt_cuda_graph_enable": "bool", "trt_dump_ep_context_model": "bool",
    "trt_ep_context_file_path": "text", "trt_ep_context_embed_mode": "int",
}
_CUDA_BOOL_KEYS = frozenset({"do_copy_in_default_stream", "use_ep_level_unified_stream"})


def onnx_signatures(facts: EntryFacts) -> dict[int, ModelSignature | str]:
    """Each loaded version's model file, read once per entry."""
    return facts.memo("onnx", lambda: {
        version: read_onnx_signature(facts.version_path(version) / facts.model_filename)
        for version in facts.versions
    })


def compare_dims(model: tuple[int, ...], dims: list[int], max_batch_size: int, *, exact: bool) -> str:
    """``CompareDimsSupported`` (onnxruntime_utils.cc:484-551): "" where the backend accepts."""
    if max_batch_size > 0:
        if not model or model[0] != -1:
            return ("for the model to support batching the shape should have at least 1 dimension and the first "
                    f"dimension must be -1; but shape expected by the model is {shape_text(model)}")
        full = [-1, *dims]
        described = ("an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, "
                     f"making complete shape {shape_text(full)}")
    else:
        full = list(dims)
        described = f"shape {shape_text(full)}"
    ok = len(model) == len(full) and all(
        m == f for m, f in zip(model, full, strict=True) if exact or m != -1
    )
    if ok:
        return ""
    return (f"the model expects {len(model)} dimensions (shape {shape_text(model)}) but the model configuration "
            f"specifies {len(full)} dimensions ({described})")


def _model_file(facts: EntryFacts) -> Iterator[str]:
    for version, signature in onnx_signatures(facts).items():
        if isinstance(signature, str):
            yield f"version {version}: {signature}"


def _tensors(facts: EntryFacts) -> Iterator[str]:
    config, name = facts.config, facts.name
    bf16 = facts.release_at_least("2.68.0")  # r26.04 added TYPE_BF16
    for version, signature in onnx_signatures(facts).items():
        if isinstance(signature, str):
            continue
        where = f"version {version}: model '{name}'"
        required = [t for t in config.input if not t.optional]
        if len(required) != len(signature.inputs):
            yield (f"version {version}: unable to load model '{name}', configuration expects {len(required)} "
                   f"inputs, model provides {len(signature.inputs)}")
        for kind, tensors, found in (("input", config.input, signature.inputs),
                                     ("output", config.output, signature.outputs)):
            for tensor in tensors:
                data_type = model_config_pb2.DataType.Name(tensor.data_type)
                if kind == "input" and tensor.optional and config.max_batch_size > 0:
                    yield (f"version {version}: unable to load model '{name}', optional input '{tensor.name}' is "
                           "not supported for models that support batching")
                model = found.get(tensor.name)
                if model is None and not (kind == "input" and tensor.name in signature.overridable):
                    yield (f"version {version}: unexpected inference {kind} '{tensor.name}', allowed {kind}s are: "
                           f"{', '.join(sorted(found))}")
                    continue
                if model is None:
                    continue
                if data_type not in _SUPPORTED and not (bf16 and data_type == "TYPE_BF16"):
                    yield f"version {version}: unsupported datatype {data_type} for {kind} '{tensor.name}' for " \
                          f"model '{name}'"
                elif model.data_type != data_type:
                    yield (f"version {version}: unable to load model '{name}', configuration expects datatype "
                           f"{data_type} for {kind} '{tensor.name}', model provides {model.data_type}")
                dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
                problem = compare_dims(model.shape, dims, config.max_batch_size, exact=kind == "output")
                if problem:
                    yield f"{where}, tensor '{tensor.name}': {problem}"


def _parameters(facts: EntryFacts) -> Iterator[str]:
    parameters = facts.parameters
    for key in ("intra_op_thread_count", "inter_op_thread_count", "execution_mode"):
        if key in parameters and stoi(parameters[key]) is None:
            yield f"parameter {key}: failed to convert '{parameters[key]}' to integral number"
    mode = parameters.get("execution_mode")
    if mode is not None and stoi(mode) not in (None, 0, 1):
        yield f"Invalid configuration value provided. Expected values for  execution_mode are 0 or 1 but got {mode} ."
    for key in ("enable_mem_arena", "enable_mem_pattern"):
        if key in parameters and parameters[key].lower() not in BOOL_VALUES:
            yield f"parameter {key}: failed to convert '{parameters[key]}' to boolean"


def _accelerator_value(name: str, key: str, value: str, facts: EntryFacts) -> str:
    kind = TENSORRT_ACCELERATOR_KEYS.get(key)
    if kind is None:
        return f"unknown parameter '{key}' is provided for TensorRT Execution Accelerator"
    if kind == "precision":
        modes = ("FP32", "FP16", "INT8", "BF16") if facts.release_at_least("2.66.0") else ("FP32", "FP16", "INT8")
        return "" if value in modes else f"unsupported precision mode '{value}' is requested"
    if kind == "bool" and value.lower() not in BOOL_VALUES:
        return f"{name} accelerator parameter {key}: failed to convert '{value}' to boolean"
    if kind == "int" and stoi(value) is None:
        return f"{name} accelerator parameter {key}: failed to convert '{value}' to integral number"
    return ""


def _accelerators(facts: EntryFacts) -> Iterator[str]:
    accelerators = facts.config.optimization.execution_accelerators
    for accelerator in accelerators.cpu_execution_accelerator:
        if accelerator.name != "openvino":
            yield f"unknown Execution Accelerator '{accelerator.name}' is requested (cpu_execution_accelerator)"
    # Read only by instances on a GPU (onnxruntime.cc:420-421): a CPU host never parses them.
    if "gpu" not in facts.hosts() or "KIND_GPU" not in facts.instance_kinds("gpu"):
        return
    for accelerator in accelerators.gpu_execution_accelerator:
        if accelerator.name not in ("tensorrt", "cuda"):
            yield f"unknown Execution Accelerator '{accelerator.name}' is requested (on a GPU instance)"
            continue
        for key, value in sorted(accelerator.parameters.items()):
            if accelerator.name == "tensorrt":
                problem = _accelerator_value(accelerator.name, key, value, facts)
            elif key in _CUDA_BOOL_KEYS and value.lower() not in BOOL_VALUES:
                problem = f"cuda accelerator parameter {key}: failed to convert '{value}' to boolean"
            else:
                problem = ""
            if problem:
                yield f"{problem} (on a GPU instance)"


ONNXRUNTIME_RULES: tuple[Rule, ...] = (
    Rule("onnxruntime.model-file", "onnxruntime", "load",
         "Each loaded version holds `default_model_filename` (model.onnx), a readable ONNX file or a folder "
         "holding model.onnx.",
         "unable to find '<path>' for model instance '<name>'",
         (Source(_REPO, _ORT, "378-403", checked=_NEWEST),), _model_file, _ONNXRUNTIME),
    Rule("onnxruntime.tensors", "onnxruntime", "load",
         "Inputs and outputs exist in the file with exactly its data type (BOOL, integers, FP16, FP32, FP64, "
         "STRING; BF16 from 26.04); with max_batch_size > 0 every tensor's first dimension is dynamic; input dims "
         "match the file's where it is fixed, output dims match exactly; optional inputs only without batching.",
         "model '<name>', tensor '<tensor>': the model expects 4 dimensions (shape [-1,3,224,224]) but the model "
         "configuration specifies ...",
         (Source(_REPO, _UTILS, "484-551", checked=_NEWEST), Source(_REPO, _ORT, "1629-1818", checked=_NEWEST),
          Source(_REPO, _UTILS, "367-405")), _tensors, _ONNXRUNTIME),
    Rule("onnxruntime.parameters", "onnxruntime", "load",
         "`intra_op_thread_count`, `inter_op_thread_count` and `execution_mode` are integers (std::stoi), "
         "`execution_mode` 0 or 1; `enable_mem_arena` and `enable_mem_pattern` are true/on/1/false/off/0.",
         "Invalid configuration value provided. Expected values for  execution_mode are 0 or 1 but got <n> .",
         (Source(_REPO, _ORT, "239-360", checked=_NEWEST), Source("backend", "src/backend_common.cc", "972-1005")),
         _parameters, _ONNXRUNTIME),
    Rule("onnxruntime.accelerators", "onnxruntime", "load",
         "`cpu_execution_accelerator` may only be openvino. On GPU instances (only there) "
         "`gpu_execution_accelerator` is tensorrt or cuda; TensorRT takes only its known keys, `precision_mode` "
         "FP32, FP16 or INT8 (BF16 from 26.02), booleans as true/on/1/false/off/0.",
         "unknown parameter '<key>' is provided for TensorRT Execution Accelerator",
         (Source(_REPO, _ORT, "420-753", checked=_NEWEST), Source(_REPO, _ORT, "879-920", checked=_NEWEST)),
         _accelerators, _ONNXRUNTIME),
)
