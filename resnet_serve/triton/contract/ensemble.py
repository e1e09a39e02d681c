"""What Triton's core refuses in an ensemble: the fields it takes, its tensor graph, its steps'
batching, names, data types and shapes (triton-inference-server/core r24.10, the same code at
r26.06: ``model_config_utils.cc`` before the steps load, ``ensemble_utils.cc`` after)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2

from resnet_serve.triton.contract.core import dims_match, shape_text
from resnet_serve.triton.contract.facts import EntryFacts
from resnet_serve.triton.contract.rules import Rule, Source

__all__ = ["ENSEMBLE_RULES", "ensemble_cycle"]

_CORE = "core"
_MCU = "src/model_config_utils.cc"
_UTILS = "src/ensemble_scheduler/ensemble_utils.cc"
_MANAGER = "src/model_repository_manager/model_repository_manager.cc"
_ENSEMBLE = frozenset({"ensemble"})


def _fields(facts: EntryFacts) -> Iterator[str]:
    config = facts.config
    if config.instance_group:
        yield f"instance group should not be specified for ensemble '{facts.name}'"
    if config.HasField("optimization"):
        yield f"optimization should not be specified for ensemble '{facts.name}'"
    if config.model_warmup:
        yield f"model_warmup can not be specified for ensemble '{facts.name}'"


@dataclass
class _Tensor:
    written: bool = False
    ready: bool = False
    feeds: list[str] = field(default_factory=list)  # tensors computed from this one
    needs: list[str] = field(default_factory=list)  # tensors this one is computed from


def _graph(facts: EntryFacts) -> Iterator[str]:
    """``ValidateEnsembleSchedulingConfig``: steps well formed, every input used, every output
    written from the inputs, no tensor written twice or left dangling."""
    config, name = facts.config, facts.name
    steps = config.ensemble_scheduling.step
    if not steps:
        yield f"must specify 'step' for ensemble '{name}'"
        return
    tensors: dict[str, _Tensor] = {}
    for index, step in enumerate(steps):
        for what, filled in (("model_name", step.model_name), ("input_map", step.input_map),
                             ("output_map", step.output_map)):
            if not filled:
                yield f"must specify '{what}' in step {index} of ensemble '{name}'"
                return
        outputs = []
        for tensor_name in step.output_map.values():
            tensor = tensors.setdefault(tensor_name, _Tensor())
            if tensor.written:
                yield f"ensemble tensor '{tensor_name}' can appear in an output map only once for ensemble " \
                      f"'{name}' step {index}"
                return
            tensor.written = True
            outputs.append(tensor_name)
        for tensor_name in step.input_map.values():
            tensors.setdefault(tensor_name, _Tensor()).feeds.extend(outputs)
            for output in outputs:
                tensors[output].needs.append(tensor_name)
    ready = []
    for tensor in config.input:
        if tensor.name not in tensors:
            yield f"ensemble input '{tensor.name}' for ensemble {name}' is not used"
            return
        tensors[tensor.name].ready = True
        ready.append(tensor.name)
    while ready:
        for following in tensors[ready.pop(0)].feeds:
            node = tensors[following]
            if not node.ready and all(tensors[n].ready for n in node.needs):
                node.ready = True
                ready.append(following)
    for tensor in config.output:
        if tensor.name not in tensors:
            yield f"ensemble output '{tensor.name}' for ensemble {name}' is not used"
        elif not tensors[tensor.name].ready:
            yield f"output '{tensor.name}' for ensemble '{name}' is not written"
    outputs = {tensor.name for tensor in config.output}
    for tensor_name, tensor in sorted(tensors.items()):
        if tensor_name not in outputs and (not tensor.ready or not tensor.feeds):
            yield f"ensemble tensor '{tensor_name}' is unused in ensemble '{name}'"


def ensemble_cycle(name: str, configs: dict[str, model_config_pb2.ModelConfig]) -> list[str] | None:
    """The ensembles of a cycle through ``name`` (``[name, ..., name]``), or None."""

    def walk(current: str, path: list[str]) -> list[str] | None:
        config = configs.get(current)
        if config is None or config.platform != "ensemble":
            return None
        for step in config.ensemble_scheduling.step:
            if step.model_name == name:
                return [*path, name]
            if step.model_name not in path:
                found = walk(step.model_name, [*path, step.model_name])
                if found:
                    return found
        return None

    return walk(name, [name])


def _steps(facts: EntryFacts) -> Iterator[str]:
    steps = facts.config.ensemble_scheduling.step
    missing = sorted({s.model_name for s in steps if s.model_name and s.model_name not in facts.repository})
    if missing:
        yield f"ensemble {facts.name} contains models that are not available or ambiguous: {', '.join(missing)}"
    cycle = ensemble_cycle(facts.name, dict(facts.repository))
    if cycle:
        yield f"circular dependency between ensembles: {' -> '.join(cycle)}"


def _io(tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, *, own: bool) -> list[int]:
    # The ensemble's own tensors are read through their reshape; steps' through their dims.
    return list(tensor.reshape.shape) if own and tensor.HasField("reshape") else list(tensor.dims)


def _step_models(facts: EntryFacts) -> Iterator[str]:
    """``ValidateEnsembleConfig``: each step's batching, names, data types and shapes."""
    config, name = facts.config, facts.name
    batching = config.max_batch_size > 0
    # tensor → (data type, dims, batching, model it is inferred from)
    seen: dict[str, tuple[int, list[int], bool, str]] = {}
    for tensor in (*config.input, *config.output):
        seen.setdefault(tensor.name, (tensor.data_type, _io(tensor, own=True), batching, name))

    def consistent(tensor_name: str, data_type: int, dims: list[int], step_batching: bool, model: str) -> str:
        if tensor_name not in seen:
            seen[tensor_name] = (data_type, dims, step_batching, model)
            return ""
        known_type, known_dims, known_batching, known_model = seen[tensor_name]
        prefix = f"in ensemble {name}, ensemble tensor {tensor_name}: "
        if known_type != data_type:
            return (f"{prefix}inconsistent data type: {model_config_pb2.DataType.Name(known_type)} is inferred from "
                    f"model {known_model} while {model_config_pb2.DataType.Name(data_type)} is inferred from "
                    f"model {model}")
        known_full = [-1, *known_dims] if known_batching else known_dims
        full = [-1, *dims] if step_batching else dims
        if not dims_match(known_dims, dims) and not dims_match(known_full, full):
            return (f"{prefix}inconsistent shape: {shape_text(known_full)} is inferred from model {known_model} "
                    f"while {shape_text(full)} is inferred from model {model}")
        return ""

    for step in config.ensemble_scheduling.step:
        model = facts.repository.get(step.model_name)
        if model is None:
            continue
        if model.max_batch_size and model.max_batch_size < config.max_batch_size:
            yield (f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it contains model "
                   f"{step.model_name} which only allows maximum batch size to be {model.max_batch_size}")
        step_batching = model.max_batch_size > 0
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for model_input, tensor_name in step.input_map.items():
            if model_input not in inputs:
                yield (f"in ensemble {name}, ensemble tensor {tensor_name} is mapping to non-existing input "
                       f"{model_input} in model {step.model_name}")
        for model_input, tensor in inputs.items():
            if model_input in step.input_map:
                problem = consistent(step.input_map[model_input], tensor.data_type, list(tensor.dims), step_batching,
                                     step.model_name)
                if problem:
                    yield problem
            elif not tensor.optional:
                yield (f"in ensemble {name}, input {model_input} in model {step.model_name} is not mapped to any "
                       "ensemble tensors")
        for model_output, tensor_name in step.output_map.items():
            if model_output not in outputs:
                yield (f"in ensemble {name}, ensemble tensor {tensor_name} is mapped from non-existing output "
                       f"{model_output} in model {step.model_name}")
                continue
            output = outputs[model_output]
            problem = consistent(tensor_name, output.data_type, list(output.dims), step_batching, step.model_name)
            if problem:
                yield problem


ENSEMBLE_RULES: tuple[Rule, ...] = (
    Rule("ensemble.fields", "ensemble", "load",
         "An ensemble has no instance_group, optimization or model_warmup: its steps' models own them.",
         "instance group should not be specified for ensemble '<name>'",
         (Source(_CORE, _MCU, "166-186", checked="r26.06"),), _fields, _ENSEMBLE),
    Rule("ensemble.graph", "ensemble", "load",
         "Steps name a model, an input map and an output map; every ensemble input is used, every output is "
         "written from the inputs, no tensor is written twice or left unused.",
         "output '<name>' for ensemble '<ensemble>' is not written",
         (Source(_CORE, _MCU, "75-150", checked="r26.06"), Source(_CORE, _MCU, "187-290", checked="r26.06")),
         _graph, _ENSEMBLE),
    Rule("ensemble.steps", "ensemble", "load",
         "Every step names a model of the repository, and no ensemble reaches itself through its steps.",
         "ensemble <name> contains models that are not available or ambiguous: <models>",
         (Source(_CORE, _MANAGER, "2103-2108"), Source(_CORE, _MANAGER, "2195-2208")), _steps, _ENSEMBLE),
    Rule("ensemble.step-models", "ensemble", "load",
         "A batching step allows at least the ensemble's max_batch_size; step inputs and outputs exist and are "
         "mapped; each ensemble tensor has one data type and one shape (-1 matches any size; a batching and a "
         "non-batching model agree when the batch dimension is added).",
         "ensemble <name> allows maximum batch size <n>, but it contains model <step> which only allows maximum "
         "batch size to be <m>",
         (Source(_CORE, _UTILS, "85-200", checked="r26.06"), Source(_CORE, _UTILS, "288-302", checked="r26.06")),
         _step_models, _ENSEMBLE),
)
