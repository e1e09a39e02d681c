"""The model zoo: every architecture by name, with a plain (shortcut-free) twin of each depth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from resnet_serve.errors import UnknownArchitectureError
from resnet_serve.models.blocks import BasicBlock, Bottleneck
from resnet_serve.models.resnet import CifarResNet, ResNet

__all__ = ["ArchitectureInfo", "ResNet", "CifarResNet", "create_model", "list_models", "architecture_info"]


@dataclass(frozen=True)
class ArchitectureInfo:
    """What the registry knows of one architecture; ``params`` counts its default head."""

    name: str
    family: str  # "imagenet" or "cifar"
    depth: int
    block: str  # "basic" or "bottleneck"
    residual: bool
    default_num_classes: int
    default_input_size: int
    params: int

    def to_dict(self) -> dict:
        return asdict(self)


_IMAGENET_LAYERS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_CIFAR_DEPTHS = (20, 32, 44, 56, 110)

_BUILDERS: dict[str, tuple[Callable[..., nn.Module], dict]] = {}
for _depth, (_block, _layers) in _IMAGENET_LAYERS.items():
    for _residual, _prefix in ((True, "resnet"), (False, "plain")):
        _BUILDERS[f"{_prefix}{_depth}"] = (
            partial(ResNet, _block, _layers, residual=_residual),
            dict(family="imagenet", depth=_depth, block="bottleneck" if _block is Bottleneck else "basic",
                 residual=_residual, default_num_classes=1000, default_input_size=224),
        )
for _depth in _CIFAR_DEPTHS:
    for _residual, _prefix in ((True, "resnet"), (False, "plain")):
        _BUILDERS[f"{_prefix}{_depth}"] = (
            partial(CifarResNet, _depth, residual=_residual),
            dict(family="cifar", depth=_depth, block="basic", residual=_residual,
                 default_num_classes=10, default_input_size=32),
        )


def _lookup(name: str) -> tuple[Callable[..., nn.Module], dict]:
    try:
        return _BUILDERS[name.lower()]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(_BUILDERS)}"
        ) from None


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    zero_init_last: bool = False,
) -> nn.Module:
    """Build an architecture by name; ``num_classes`` defaults to its family's (1000 or 10)."""
    builder, facts = _lookup(name)
    return builder(
        num_classes=num_classes or facts["default_num_classes"],
        in_channels=in_channels,
        zero_init_last=zero_init_last,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def architecture_info(name: str) -> ArchitectureInfo:
    _, facts = _lookup(name)
    # Shapes alone decide the count: building on the meta device allocates no weights.
    with torch.device("meta"):
        params = count_parameters(create_model(name))
    return ArchitectureInfo(name=name.lower(), params=params, **facts)


def list_models() -> list[ArchitectureInfo]:
    return [architecture_info(name) for name in _BUILDERS]
