"""What Triton's OpenVINO backend refuses (triton-inference-server/openvino_backend, read at
r24.10 and r26.08; the request-time batch code is the same in every release between).

The rule users meet first: with ``max_batch_size`` > 0 the backend fixes the model's batch to
``max_batch_size`` (``ov::set_batch``) and answers every execution whose running total of
images is not exactly that with an error, unless ``ENABLE_BATCH_PADDING`` is ``yes``; then it
pads each execution to ``max_batch_size`` images, but the pad size it keeps is only assigned
while the total differs, never reset, so an execution that totals exactly ``max_batch_size``
after a padded one is cut short (server issue #7363). ``max_batch_size: 1`` (or 0, with the
model's own dynamic batch) is the configuration that answers every request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

from resnet_serve.errors import first_line
from resnet_serve.triton.contract.core import shape_text
from resnet_serve.triton.contract.facts import EntryFacts
from resnet_serve.triton.contract.rules import Rule, Source
from resnet_serve.triton.contract.signatures import ModelSignature, TensorSignature
from resnet_serve.triton.entry_files import file_problem

__all__ = ["OPENVINO_RULES", "OPENVINO_TYPES", "batch_padding", "openvino_flag"]

_REPO = "openvino_backend"
_OV = "src/openvino.cc"
_UTILS = "src/openvino_utils.cc"
_NEWEST = "r26.08"
_OPENVINO = frozenset({"openvino"})
# ModelConfigDataTypeToOpenVINOElement (openvino_utils.cc:133-163): nothing else converts.
OPENVINO_TYPES = frozenset({"TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
                            "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32"})
# A dimension as the backend compares it: static, -1 (unbounded) or (min, max).
Dim = int | tuple[int, int]


def openvino_flag(parameters: Mapping[str, str], key: str) -> bool:
    """``ParseBoolParameter``: on only for the value ``yes``, in any case; anything else is off."""
    return parameters.get(key, "").lower() == "yes"


def batch_padding(parameters: Mapping[str, str]) -> bool:
    return openvino_flag(parameters, "ENABLE_BATCH_PADDING")


def _digits(value: str) -> bool:
    # IsNumber (openvino_utils.cc): every character an ASCII digit.
    return value.isascii() and value.isdigit()


def _dims(partial_shape: Any) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for dim in partial_shape:
        if dim.is_static:
            dims.append(dim.get_length())
        else:
            low, high = dim.get_min_length(), dim.get_max_length()
            dims.append(-1 if high < 0 else (low, high))
    return tuple(dims)


def _signed(dims: tuple[Dim, ...]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


def _does_match(model: Dim, config: int) -> bool:
    if isinstance(model, int):
        return model == -1 or model == config
    return model[0] < config < model[1]  # strictly inside a bounded dimension (openvino_utils.cc:193-202)


def compare_dims(model: tuple[Dim, ...], dims: list[int], max_batch_size: int, *, exact: bool) -> str:
    """``CompareDimsSupported`` (openvino_utils.cc:204-273): "" where the backend accepts."""
    if max_batch_size > 0:
        if not model:
            return "for the model to support batching the shape should have at least 1 dimension"
        full = [max_batch_size, *dims]
        ok = len(model) == len(full) and all(
            _does_match(m, f) for i, (m, f) in enumerate(zip(model, full, strict=True))
            if exact or (i != 0 and f != -1)
        )
        described = ("an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, "
                     f"making complete shape {shape_text(full)}")
    else:
        full = list(dims)
        ok = len(model) == len(full) and all(_does_match(m, f) for m, f in zip(model, full, strict=True))
        described = f"shape {shape_text(full)}"
    if ok:
        return ""
    return (f"the model expects {len(model)} dimensions (shape {shape_text(_signed(model))}) but the model "
            f"configuration specifies {len(full)} dimensions ({described})")


def _read(path: Path, config: model_config_pb2.ModelConfig) -> tuple[ModelSignature, list[str]] | str:
    """Read the file as the backend does: inputs as read, outputs after ``set_batch``."""
    if not path.exists():
        return f"unable to find '{path}'"
    problem = file_problem(path)
    if problem:
        return problem
    try:
        import openvino
        from openvino.preprocess import PrePostProcessor
    except ImportError:
        return "openvino is not installed here, so its model file cannot be read (pip install openvino)"
    try:
        model = openvino.Core().read_model(str(path))
    except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
        return f"openvino error in reading model : {first_line(error)}"

    def signature(ports: Any) -> dict[str, TensorSignature]:
        # The backend matches config names against each tensor's get_any_name() only.
        return {port.get_any_name(): TensorSignature(f"TYPE_{port.get_element_type().get_type_name().upper()}",
                                                     _dims(port.get_partial_shape())) for port in ports}

    inputs = signature(model.inputs)
    problems = []
    if config.max_batch_size:
        try:
            processor = PrePostProcessor(model)
            for tensor in config.input:
                if tensor.name in inputs:
                    processor.input(tensor.name).tensor().set_layout(openvino.Layout("N..."))
            model = processor.build()
            openvino.set_batch(model, config.max_batch_size)
        except Exception as error:  # noqa: BLE001
            problems.append(f"openvino error in setting max batch size : {first_line(error)}")
    return ModelSignature(inputs=inputs, outputs=signature(model.outputs)), problems


def _model_files(facts: EntryFacts) -> dict[int, tuple[ModelSignature, list[str]] | str]:
    return facts.memo("openvino", lambda: {
        version: _read(facts.version_path(version) / facts.model_filename, facts.config)
        for version in facts.versions
    })


def _model_file(facts: EntryFacts) -> Iterator[str]:
    for version, read in _model_files(facts).items():
        if isinstance(read, str):
            yield f"version {version}: {read}"
        else:
            yield from (f"version {version}: {problem}" for problem in read[1])


def _tensors(facts: EntryFacts) -> Iterator[str]:
    config, name = facts.config, facts.name
    reshaping_inputs = openvino_flag(facts.parameters, "RESHAPE_IO_LAYERS")
    for tensor in config.input:
        if tensor.optional:
            yield (f"'optional' is set to true for input '{tensor.name}' while the backend model doesn't support "
                   "optional input")
    for version, read in _model_files(facts).items():
        if isinstance(read, str):
            continue
        signature = read[0]
        if len(config.input) != len(signature.inputs):
            yield (f"version {version}: unable to load model '{name}', configuration expects {len(config.input)} "
                   f"inputs, model provides {len(signature.inputs)}")
        for kind, tensors, found in (("input", config.input, signature.inputs),
                                     ("output", config.output, signature.outputs)):
            for tensor in tensors:
                data_type = model_config_pb2.DataType.Name(tensor.data_type)
                if tensor.name not in found:
                    yield (f"version {version}: unexpected inference {kind} '{tensor.name}', allowed {kind}s are: "
                           f"{', '.join(sorted(found))}")
                    continue
                if data_type not in OPENVINO_TYPES:
                    yield f"unsupported datatype {data_type} for {kind} '{tensor.name}' for model '{name}'"
                    continue
                if kind == "input" and reshaping_inputs:
                    continue  # RESHAPE_IO_LAYERS reshapes the model to the config instead of comparing
                dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
                problem = compare_dims(found[tensor.name].shape, dims, config.max_batch_size, exact=kind == "output")
                if problem:
                    yield f"version {version}: model '{name}', tensor '{tensor.name}': {problem}"


def _instance_kind(facts: EntryFacts) -> Iterator[str]:
    for host in facts.hosts():
        if any(kind != "KIND_CPU" for kind in facts.instance_kinds(host)):
            where = "on a GPU host, where KIND_AUTO is KIND_GPU" if host == "gpu" else "on any host"
            yield f"unable to load model '{facts.name}', Triton openVINO backend supports only CPU device ({where})"
            return


def _parameters(facts: EntryFacts) -> Iterator[str]:
    parameters = facts.parameters
    for key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
        value = parameters.get(key, "")
        if value and not _digits(value):
            yield f"expected the parameter '{key}' to be a non-negative number, got {value.lower()}"
    value = parameters.get("HINT_BF16", "").lower()
    if value and value != "yes":
        yield f"expected the parameter 'HINT_BF16' to be YES, got {value}"
    value = parameters.get("NUM_STREAMS", "").lower()
    if value and value not in ("auto", "numa") and not _digits(value):
        yield f"expected the parameter 'NUM_STREAMS' to be either AUTO/NUMA/<int_value>, got {value}"
    value = parameters.get("PERFORMANCE_HINT", "").lower()
    if value and value not in ("latency", "throughput", "cumulative_throughput"):
        yield f"expected the parameter 'PERFORMANCE_HINT' to be LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got {value}"


def _exact_batch(facts: EntryFacts) -> Iterator[str]:
    batch = facts.max_batch_size
    if batch > 1 and not batch_padding(facts.parameters):
        yield (f"max_batch_size {batch} without ENABLE_BATCH_PADDING=YES: the backend answers every execution that is "
               f"not exactly {batch} images with \"expected requests with batch size '{batch}', got '<n>'\": every "
               "request of fewer images, and every batch the dynamic batcher merges, fails; serve OpenVINO with "
               "max_batch_size 1")


def _warmup(facts: EntryFacts) -> Iterator[str]:
    """Core sends a warm-up sample of batch b as b one-image requests in one execution
    (backend_model_instance.cc:500-540): its running total starts at 1."""
    batch, padding = facts.max_batch_size, batch_padding(facts.parameters)
    if batch <= 1:
        return
    for sample in facts.config.model_warmup:
        if sample.batch_size and not padding:
            yield (f"warm-up sample '{sample.name}' is an execution of 1 image, not {batch}: \"expected requests with "
                   f"batch size '{batch}', got '1'\" fails it, and with it the load")
        elif sample.batch_size == batch:
            yield (f"warm-up sample '{sample.name}' totals {batch} images after padded partial totals, so the stale "
                   f"pad leaves {batch - 1} output rows for {batch} requests: it fails, and with it the load")


def _padding(facts: EntryFacts) -> Iterator[str]:
    batch = facts.max_batch_size
    if batch > 1 and batch_padding(facts.parameters):
        yield (f"ENABLE_BATCH_PADDING pads every execution to {batch} images (the compute of {batch} for any batch), "
               f"and an execution of exactly {batch} after a padded one fails its last requests (\"failed to split "
               "the output tensor\": the pad size is never reset)")


OPENVINO_RULES: tuple[Rule, ...] = (
    Rule("openvino.instance-kind", "openvino", "load",
         "Instances run on the CPU only: KIND_CPU, or no instance group (KIND_AUTO is KIND_GPU on a GPU host).",
         "unable to load model '<name>', Triton openVINO backend supports only CPU device",
         (Source(_REPO, _OV, "937-943", checked="r26.08 (963-969, reworded)"),), _instance_kind, _OPENVINO),
    Rule("openvino.model-file", "openvino", "load",
         "Each loaded version holds `default_model_filename` (model.xml, or model.onnx when named), which "
         "OpenVINO reads, and whose batch `ov::set_batch` can fix to max_batch_size.",
         "unable to find '<path>' for model '<name>'",
         (Source(_REPO, _OV, "205-231", checked=_NEWEST), Source(_REPO, _OV, "585-600", checked=_NEWEST)),
         _model_file, _OPENVINO),
    Rule("openvino.tensors", "openvino", "load",
         "Inputs and outputs exist in the file (by any_name), of BOOL, integer, FP16 or FP32 type (OpenVINO "
         "converts between them); no optional inputs; input dims match where both are given, output dims match "
         "exactly after the batch is fixed.",
         "unsupported datatype <type> for input '<tensor>' for model '<name>'",
         (Source(_REPO, _OV, "495-663", checked=_NEWEST), Source(_REPO, _UTILS, "133-273", checked=_NEWEST),
          Source("backend", "src/backend_model.cc", "141-149")), _tensors, _OPENVINO),
    Rule("openvino.parameters", "openvino", "load",
         "INFERENCE_NUM_THREADS and COMPILATION_NUM_THREADS are digits; HINT_BF16 is YES; NUM_STREAMS is "
         "AUTO, NUMA or digits; PERFORMANCE_HINT is LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT. The flags "
         "ENABLE_BATCH_PADDING, SKIP_OV_DYNAMIC_BATCHSIZE and RESHAPE_IO_LAYERS are on only for 'yes'.",
         "expected the parameter 'HINT_BF16' to be YES, got <value>",
         (Source(_REPO, _OV, "296-398", checked=_NEWEST),), _parameters, _OPENVINO),
    Rule("openvino.warmup-batch", "openvino", "load",
         "With max_batch_size > 1 a warm-up sample (b requests of one image in one execution) fails unless padding "
         "is on and b < max_batch_size; a failed warm-up fails the model's load.",
         "failed to run warmup sample '<sample>': expected requests with batch size '<max>', got '1'...",
         (Source(_REPO, _OV, "1031-1066"), Source("core", "src/backend_model_instance.cc", "500-540"),
          Source("core", "src/backend_model_instance.cc", "651-663")), _warmup, _OPENVINO),
    Rule("openvino.exact-batch", "openvino", "request",
         "With max_batch_size > 0 every execution must total exactly max_batch_size images (the running total is "
         "checked request by request); without ENABLE_BATCH_PADDING any other is an error for all its requests.",
         "expected requests with batch size '<max>', got '<n>'... this error can be avoided by setting "
         "'ENABLE_BATCH_PADDING' parameter in model configuration to 'YES' at a performance cost.",
         (Source(_REPO, _OV, "1031-1066", checked="r26.08 (1063-1098)"),), _exact_batch, _OPENVINO),
    Rule("openvino.batch-padding", "openvino", "request",
         "ENABLE_BATCH_PADDING zero-pads each execution to max_batch_size; the pad size is set only while the "
         "running total differs from max_batch_size and never reset, so an execution totalling max_batch_size "
         "after a padded one returns too few rows and its last requests fail.",
         "failed to split the output tensor '<output>' in responses: expected batch size of at least <n> in model "
         "output, got <m>",
         (Source(_REPO, _OV, "1049-1052", checked="r26.08 (1081-1084)"), Source(_REPO, _OV, "1252-1268"),
          Source(_REPO, _OV, "1343-1362"), Source("backend", "src/backend_output_responder.cc", "85-107")),
         _padding, _OPENVINO, severity="warning"),
)
