"""BatchNorm folding: merge every Conv2d → BatchNorm2d pair into one biased convolution.

In eval mode a BatchNorm is a per-channel affine map, so it can be absorbed into the
convolution feeding it: W' = W·γ/√(σ²+ε) and b' = (b − μ)·γ/√(σ²+ε) + β. The folded network
computes the same function with one fewer layer per pair, which is what every serving runtime
wants to see.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from resnet_serve.errors import ExportError
from resnet_serve.models import count_parameters

__all__ = ["FoldResult", "fold_batchnorm"]


@dataclass
class FoldResult:
    """A folded copy of a model and what folding did to it.

    Attributes:
        model: the folded copy, in eval mode; the model passed in is left untouched.
        folded: number of BatchNorm layers merged into their convolution.
        params_before: parameter count of the model passed in.
        params_after: parameter count of the folded copy.
        unfolded: qualified names of BatchNorm layers that had to stay (no convolution feeding
            only them, no running statistics, or shared between call sites).
    """

    model: nn.Module
    folded: int
    params_before: int
    params_after: int
    unfolded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int | list[str]]:
        return {
            "folded": self.folded,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "unfolded": list(self.unfolded),
        }


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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"cannot trace {type(model).__name__} to find Conv2d→BatchNorm2d pairs: {reason}"
        ) from exc

    modules = dict(folded_model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            # Folding rewrites the conv's output, so nothing else may read it, and a module
            # called from two places would be folded for one of them and wrong for the other.
            and len(source.users) == 1
            and calls[source.target] == 1
            and calls[node.target] == 1
            and _has_running_stats(modules[node.target])
            and modules[source.target].out_channels == modules[node.target].num_features
        ):
            pairs.append((source.target, node.target))

    for conv_name, bn_name in pairs:
        _fold_into_conv(modules[conv_name], modules[bn_name])
        parent_name, _, attribute = bn_name.rpartition(".")
        setattr(folded_model.get_submodule(parent_name), attribute, nn.Identity())

    folded_names = {bn_name for _, bn_name in pairs}
    unfolded = [
        name
        for name, module in modules.items()
        if isinstance(module, nn.BatchNorm2d) and name not in folded_names
    ]
    return FoldResult(
        model=folded_model,
        folded=len(pairs),
        params_before=count_parameters(model),
        params_after=count_parameters(folded_model),
        unfolded=unfolded,
    )


def _has_running_stats(bn: nn.BatchNorm2d) -> bool:
    # Without running statistics eval mode still normalises by batch statistics: not a constant map.
    return bn.running_mean is not None and bn.running_var is not None


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

