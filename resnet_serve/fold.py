"""BatchNorm folding: merge every Conv → BatchNorm pair into one biased convolution, in
PyTorch modules (``fold_batchnorm``) and in ONNX graphs (``fold_onnx_batchnorm``).

In eval mode a BatchNorm is a per-channel affine map, so it can be absorbed into the
convolution feeding it: W' = W·γ/√(σ²+ε) and b' = (b − μ)·γ/√(σ²+ε) + β. The folded network
computes the same function with one fewer layer per pair, which is what every serving runtime
wants to see.
"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from resnet_serve.errors import ExportError, VerificationError, first_line
from resnet_serve.export.onnx import load_onnx_safely, save_onnx_checked
from resnet_serve.files import asdict_with_paths
from resnet_serve.models import count_parameters
from resnet_serve.parity import ParityResult, Tolerance, check_parity
from resnet_serve.runtimes import OnnxRuntime, compare_runtimes

__all__ = [
    "FoldResult",
    "OnnxFoldReport",
    "fold_batchnorm",
    "fold_onnx_batchnorm",
]

@dataclass
class FoldResult:
    """A folded copy of a model and what folding did to it.

    Attributes:
        model: the folded copy, in eval mode; the model passed in is left untouched.
        folded: number of BatchNorm layers merged into their convolution.
        params_before: parameter count of the model passed in.
        params_after: parameter count of the folded copy.
        unfolded: qualified names of BatchNorm layers that had to stay (no convolution feeding
            only them, as in pre-activation blocks; no running statistics; or shared between
            call sites).
        unfolded_reasons: why each of those stayed, by name.
    """

    model: nn.Module = field(metadata={"json": False})
    folded: int
    params_before: int
    params_after: int
    unfolded: list[str] = field(default_factory=list)
    unfolded_reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the model, ready for JSON."""
        return asdict_with_paths(self)


def fold_batchnorm(model: nn.Module) -> FoldResult:
    """Fold every Conv2d → BatchNorm2d pair of ``model`` into the convolution, in eval semantics.

    Pairs are found from the traced data flow (torch.fx), not from attribute names, so the
    stem, every block and the ``downsample`` projections are all covered, and a BatchNorm that
    does not directly follow a convolution is never touched. Each folded BatchNorm is replaced
    by ``nn.Identity`` in place, so module names and state-dict keys of the convolutions stay
    as they were. The arithmetic runs in float64 and is cast back to the weights' dtype once.

    Raises:
        ExportError: the model cannot be traced by torch.fx.
    """
    folded_model = copy.deepcopy(model).eval()
    try:
        graph = fx.symbolic_trace(folded_model).graph
    except Exception as exc:  # fx raises many unrelated types for untraceable Python
        raise ExportError(
            f"cannot trace {type(model).__name__} to find Conv2d→BatchNorm2d pairs: {first_line(exc)}"
        ) from exc

    modules = dict(folded_model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs: list[tuple[str, str]] = []
    unfolded: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        reason = _why_not_foldable(node, modules, calls)
        if reason is None:
            pairs.append((node.args[0].target, node.target))
        else:
            unfolded[node.target] = reason

    for conv_name, bn_name in pairs:
        _fold_into_conv(modules[conv_name], modules[bn_name])
        parent_name, _, attribute = bn_name.rpartition(".")
        setattr(folded_model.get_submodule(parent_name), attribute, nn.Identity())

    folded_names = {bn_name for _, bn_name in pairs}
    # BatchNorms the traced forward never calls are kept too, and said so.
    for name, module in modules.items():
        if isinstance(module, nn.BatchNorm2d) and name not in folded_names:
            unfolded.setdefault(name, "not called by forward")
    unfolded = {name: unfolded[name] for name in modules if name in unfolded}
    return FoldResult(
        model=folded_model,
        folded=len(pairs),
        params_before=count_parameters(model),
        params_after=count_parameters(folded_model),
        unfolded=list(unfolded),
        unfolded_reasons=unfolded,
    )


def _why_not_foldable(node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> str | None:
    """None when the BatchNorm ``node`` can be folded into the convolution feeding it."""
    bn, source = modules[node.target], node.args[0]
    if not (
        isinstance(source, fx.Node)
        and source.op == "call_module"
        and isinstance(modules[source.target], nn.Conv2d)
    ):
        # The pre-activation case (BN → ReLU → Conv): the ReLU between them makes the
        # BatchNorm impossible to push into the following convolution.
        return "not fed by a convolution"
    # Folding rewrites the conv's output, so nothing else may read it, and a module called
    # from two places would be folded for one of them and wrong for the other.
    if len(source.users) != 1:
        return "its convolution's output is also read elsewhere"
    if calls[source.target] != 1 or calls[node.target] != 1:
        return "called from more than one place"
    # Without running statistics eval mode still normalises by batch statistics: not a constant map.
    if bn.running_mean is None or bn.running_var is None:
        return "has no running statistics"
    if modules[source.target].out_channels != bn.num_features:
        return "its channel count differs from the convolution's"
    return None


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    weight = conv.weight.detach().to(torch.float64)
    channels = weight.shape[0]
    bias = (
        conv.bias.detach().to(torch.float64)
        if conv.bias is not None
        else torch.zeros(channels, dtype=torch.float64, device=weight.device)
    )
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else 1.0
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else 0.0
    scale = gamma / torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)

    dtype, requires_grad = conv.weight.dtype, conv.weight.requires_grad
    conv.weight = nn.Parameter(
        (weight * scale.reshape(-1, 1, 1, 1)).to(dtype), requires_grad=requires_grad
    )
    conv.bias = nn.Parameter(
        ((bias - bn.running_mean.to(torch.float64)) * scale + beta).to(dtype),
        requires_grad=requires_grad,
    )



@dataclass
class OnnxFoldReport:
    """What ``fold_onnx_batchnorm`` did to an ONNX graph.

    Attributes:
        path: the folded ONNX file written.
        folded: BatchNormalization nodes merged into the Conv feeding them.
        batchnorm_nodes: BatchNormalization nodes left in the folded graph.
        unfolded: why each of those stayed, by node name (or output name if unnamed).
        params_before / params_after: numbers stored in initializers and Constant nodes, before
            and after; unlike PyTorch parameter counts these include BatchNorm running
            statistics, so each fold of C channels saves 3C (γ, β, mean, var in; a bias out).
        parity: folded vs unfolded graph on ``images``; None without images.
    """

    path: Path
    folded: int
    batchnorm_nodes: int
    unfolded: dict[str, str]
    params_before: int
    params_after: int
    parity: ParityResult | None = None

    def to_dict(self) -> dict:
        return asdict_with_paths(self)


def fold_onnx_batchnorm(
    source: Path | onnx.ModelProto,
    output: Path,
    *,
    images: np.ndarray | None = None,
    tolerance: Tolerance = Tolerance(),
) -> OnnxFoldReport:
    """Fold every Conv → BatchNormalization pair of an ONNX graph into the Conv's weights and bias.

    A BatchNormalization is folded when its input comes from a Conv whose output nothing else
    reads, the Conv's weights (and bias, if any) and the BatchNorm's four parameters are
    constants (initializers, Constant nodes or Identity of those), and it runs in inference
    mode. W' and b' are computed in float64 and cast back to the weights' type; the Conv takes
    over the BatchNorm's output name, so consumers and graph outputs need no rewiring. Constants
    left unused are dropped; everything else is kept as it was.

    ``source`` given as a path goes through ``load_onnx_safely``; a ModelProto is copied, never
    changed. With ``images`` (float32 N×C×H×W) the folded graph is run against the unfolded
    one by onnxruntime with its own optimisations off (it would fuse the pairs itself
    otherwise), in batches of up to 64 or of the graph's fixed batch size, and must meet
    ``tolerance``. The file is fully checked by ``onnx.checker`` and moved into place only when
    everything passed.

    Raises:
        ExportError: an unsafe or malformed source, or a folded graph the checker refuses.
        VerificationError: folded and unfolded differ beyond ``tolerance`` on ``images``, or
            fewer images than the graph's fixed batch size.
    """
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
    else:
        proto = load_onnx_safely(source)
    original = onnx.ModelProto()
    original.CopyFrom(proto)

    params_before = _stored_values(proto.graph)
    unfolded = _fold_graph(proto.graph)
    destination = Path(output)
    parity = None if images is None else _compare_onnx(original, proto, images=images, tolerance=tolerance)
    save_onnx_checked(proto, destination)
    remaining = sum(node.op_type == "BatchNormalization" for node in proto.graph.node)
    return OnnxFoldReport(
        path=destination,
        folded=sum(n.op_type == "BatchNormalization" for n in original.graph.node) - remaining,
        batchnorm_nodes=remaining,
        unfolded=unfolded,
        params_before=params_before,
        params_after=_stored_values(proto.graph),
        parity=parity,
    )


def _fold_graph(graph: onnx.GraphProto) -> dict[str, str]:
    """Fold in place; returns the BatchNormalization nodes left, with the reason for each."""
    constants = _constants(graph)
    uses = _uses(graph)
    producers = {name: node for node in graph.node for name in node.output}
    taken = {t.name for t in graph.initializer} | {name for node in graph.node for name in node.output}
    unfolded: dict[str, str] = {}
    folded: list[onnx.NodeProto] = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        conv = producers.get(bn.input[0])
        parameters = [constants.get(name) for name in bn.input[1:5]]
        reason = _why_not_foldable_onnx(bn, conv, parameters, constants, uses)
        if reason is not None:
            unfolded[bn.name or bn.output[0]] = reason
            continue
        weight = constants[conv.input[1]]
        has_bias = len(conv.input) > 2 and conv.input[2] != ""
        bias = constants[conv.input[2]].astype(np.float64) if has_bias else 0.0
        gamma, beta, mean, var = (p.astype(np.float64) for p in parameters)
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        new_weight = (weight.astype(np.float64) * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
        new_bias = ((bias - mean) * scale + beta).astype(weight.dtype)
        # New names, never overwritten initializers: a deduplicating exporter may share one
        # weight tensor between several Convs.
        base = conv.name or conv.output[0]
        weight_name, bias_name = _fresh(f"{base}.folded_weight", taken), _fresh(f"{base}.folded_bias", taken)
        graph.initializer.extend(
            [numpy_helper.from_array(new_weight, weight_name), numpy_helper.from_array(new_bias, bias_name)]
        )
        conv.input[1] = weight_name
        if has_bias:
            conv.input[2] = bias_name
        else:
            del conv.input[2:]
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    _drop_dead_constants(graph)
    return unfolded


def _why_not_foldable_onnx(
    bn: onnx.NodeProto,
    conv: onnx.NodeProto | None,
    parameters: list[np.ndarray | None],
    constants: dict[str, np.ndarray],
    uses: Counter,
) -> str | None:
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
    if attributes.get("training_mode", 0) or attributes.get("spatial", 1) != 1:
        return "not in inference mode"
    if any(name and uses[name] for name in bn.output[1:]):
        return "its running-statistics outputs are used"
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return "not fed by a Conv"
    if uses[bn.input[0]] != 1:
        return "its Conv's output is also read elsewhere"
    weight = constants.get(conv.input[1])
    has_bias = len(conv.input) > 2 and conv.input[2] != ""
    if weight is None or (has_bias and conv.input[2] not in constants) or any(p is None for p in parameters):
        return "its Conv weights or BatchNorm parameters are not constants"
    if weight.dtype.kind != "f":
        return f"its Conv weights are {weight.dtype}, not floating point"
    channels = weight.shape[0]
    if any(p.shape != (channels,) for p in parameters) or (has_bias and constants[conv.input[2]].shape != (channels,)):
        return "its parameters do not have one value per Conv output channel"
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Tensors of fixed value by name: initializers that are not graph inputs (those can be
    overridden at run time), Constant nodes, and Identity nodes of either (what PyTorch writes
    without constant folding)."""
    inputs = {value.name for value in graph.input}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in inputs}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    return constants


def _uses(graph: onnx.GraphProto) -> Counter:
    """How often each value is read, by nodes (subgraphs included) and as a graph output."""
    uses: Counter = Counter(value.name for value in graph.output)
    pending = list(graph.node)
    while pending:
        node = pending.pop()
        uses.update(name for name in node.input if name)
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                # A subgraph may read outer values implicitly, by name.
                pending.extend(subgraph.node)
                uses.update(value.name for value in subgraph.output)
    return uses


def _drop_dead_constants(graph: onnx.GraphProto) -> None:
    """Remove the Constant/Identity nodes and initializers nothing reads any more."""
    while True:
        uses = _uses(graph)
        dead = [
            node
            for node in graph.node
            if node.op_type in ("Constant", "Identity")
            and node.domain in ("", "ai.onnx")
            and not any(uses[name] for name in node.output)
        ]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    inputs = {value.name for value in graph.input}
    kept = [t for t in graph.initializer if uses[t.name] or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _stored_values(graph: onnx.GraphProto) -> int:
    tensors = [*graph.initializer] + [
        node.attribute[0].t
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    ]
    return sum(int(np.prod(tensor.dims, dtype=np.int64)) for tensor in tensors)


def _fresh(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}.{number}"
    taken.add(candidate)
    return candidate


def _compare_onnx(
    original: onnx.ModelProto, folded: onnx.ModelProto, *, images: np.ndarray, tolerance: Tolerance
) -> ParityResult:
    # A plain torch.onnx.export has a fixed batch (of 1): the graph runs only at that size.
    initializers = {t.name for t in original.graph.initializer}
    batch_dim = next(v for v in original.graph.input if v.name not in initializers).type.tensor_type.shape.dim[0]
    batch_size = batch_dim.dim_value if batch_dim.HasField("dim_value") else min(len(images), 64)
    if len(images) < batch_size:
        raise VerificationError(f"the graph takes batches of {batch_size} images; only {len(images)} were given")
    images = images[: len(images) - len(images) % batch_size]
    with tempfile.TemporaryDirectory(prefix="resnet-serve-fold-") as scratch:
        paths = Path(scratch) / "unfolded.onnx", Path(scratch) / "folded.onnx"
        for proto, path in zip((original, folded), paths, strict=True):
            onnx.save(proto, path, save_as_external_data=False)
        parity = compare_runtimes(
            OnnxRuntime(paths[0], name="unfolded onnx", graph_optimizations=False),
            OnnxRuntime(paths[1], name="folded onnx", graph_optimizations=False),
            images,
            batch_sizes=(batch_size,),
        )
    check_parity(parity, tolerance)
    return parity
