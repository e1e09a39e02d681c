"""The model zoo: every architecture by name, each with a plain (shortcut-free) twin.

A name is ``[preact_](resnet|plain)<depth>[_v1][_a|_b|_c]``:

- ``preact_``: pre-activation blocks (He et al., 2016, "Identity Mappings in Deep Residual
  Networks").
- ``resnet`` or ``plain``: with or without shortcuts (``plain`` takes no shortcut option).
- depth: 18, 34, 50, 101, 152 on ImageNet (224²); 20, 32, 44, 56, 110, 1202 (basic blocks)
  and 164, 1001 (bottlenecks) on CIFAR (32²).
- ``_v1``: the paper's bottleneck with the stride on the first 1×1; without it, v1.5 as in
  torchvision, stride on the 3×3. Basic-block nets are the same in both, so ``_v1`` is
  accepted there and changes nothing.
- ``_a``/``_b``/``_c``: the paper's shortcut option (``resnet.Shortcut``). The default is B on
  ImageNet (torchvision's) and for bottlenecks, A on CIFAR basic-block nets (the paper's). A
  bottleneck net takes B or C (C only on ImageNet), a CIFAR basic net A or B.

Each architecture has one canonical name, without the suffixes that restate a default:
``resnet50_b`` builds ``resnet50`` and reports that name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet_serve.errors import UnknownArchitectureError
from resnet_serve.models.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualBlock,
)
from resnet_serve.models.resnet import CifarResNet, ResNet, Shortcut

__all__ = [
    "ArchitectureInfo",
    "ResNet",
    "CifarResNet",
    "architecture_info",
    "count_macs",
    "count_parameters",
    "create_model",
    "list_models",
]

Family = Literal["imagenet", "cifar"]
Block = Literal["basic", "bottleneck"]
Version = Literal["v1", "v1.5"]


@dataclass(frozen=True)
class ArchitectureInfo:
    """What the registry knows of one architecture, for its default head and input size.

    Attributes:
        name: the canonical name, which ``create_model`` builds.
        version: "v1.5" (stride on the 3×3) or "v1" (on the first 1×1); None for basic-block
            nets, which are the same in both.
        shortcut: the paper's option "A", "B" or "C"; None for plain nets.
        params: parameter count with the default classifier.
        macs: multiply-accumulates of one image at the default input size, counted over the
            convolutions and the classifier as torchvision and fvcore do.
    """

    name: str
    family: Family
    depth: int
    block: Block
    residual: bool
    preact: bool
    version: Version | None
    shortcut: Shortcut | None
    default_num_classes: int
    default_input_size: int
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)  # compared by identity: there is one of each
class _Family:
    name: Family
    title: str
    num_classes: int
    input_size: int
    shortcuts: dict[Block, tuple[Shortcut, ...]]  # the valid options, the default first
    depths: dict[int, tuple[Block, tuple[int, ...]]]  # depth → block and blocks per stage


_FAMILIES = (
    _Family(
        name="imagenet",
        title="ImageNet",
        num_classes=1000,
        input_size=224,
        # Option A would zero-pad 64 channels to 256 inside the first bottleneck stage; the
        # paper uses projections for every bottleneck net.
        shortcuts={"basic": ("B", "A", "C"), "bottleneck": ("B", "C")},
        depths={
            18: ("basic", (2, 2, 2, 2)),
            34: ("basic", (3, 4, 6, 3)),
            50: ("bottleneck", (3, 4, 6, 3)),
            101: ("bottleneck", (3, 4, 23, 3)),
            152: ("bottleneck", (3, 8, 36, 3)),
        },
    ),
    _Family(
        name="cifar",
        title="CIFAR",
        num_classes=10,
        input_size=32,
        shortcuts={"basic": ("A", "B"), "bottleneck": ("B",)},
        # Depth counts the stem, the classifier and the 2 (basic) or 3 (bottleneck) weighted
        # layers of each block in three stages of n: 6n+2 or 9n+2.
        depths={
            depth: (block, ((depth - 2) // (3 * per_block),) * 3)
            for block, per_block, depths in (("basic", 2, (20, 32, 44, 56, 110, 1202)), ("bottleneck", 3, (164, 1001)))
            for depth in depths
        },
    ),
)
_FAMILY_OF_DEPTH = {depth: family for family in _FAMILIES for depth in family.depths}
_BLOCKS: dict[tuple[bool, Block], type[ResidualBlock]] = {
    (False, "basic"): BasicBlock,
    (False, "bottleneck"): Bottleneck,
    (True, "basic"): PreActBasicBlock,
    (True, "bottleneck"): PreActBottleneck,
}
_NAME = re.compile(r"(?P<preact>preact_)?(?P<kind>resnet|plain)(?P<depth>\d+)(?P<v1>_v1)?(?:_(?P<shortcut>[abc]))?")
_GRAMMAR = "[preact_](resnet|plain)<depth>[_v1][_a|_b|_c]"


@dataclass(frozen=True)
class _Spec:
    """One architecture, normalised: defaults filled in, irrelevant choices set to None."""

    family: _Family
    depth: int
    preact: bool
    residual: bool
    version: Version | None
    shortcut: Shortcut | None

    @property
    def block(self) -> Block:
        return self.family.depths[self.depth][0]

    @property
    def layers(self) -> tuple[int, ...]:
        return self.family.depths[self.depth][1]

    @property
    def name(self) -> str:
        prefix = ("preact_" if self.preact else "") + ("resnet" if self.residual else "plain")
        version = "_v1" if self.version == "v1" else ""
        default_shortcut = self.family.shortcuts[self.block][0]
        shortcut = f"_{self.shortcut.lower()}" if self.shortcut not in (None, default_shortcut) else ""
        return f"{prefix}{self.depth}{version}{shortcut}"

    def with_residual(self, residual: bool) -> _Spec:
        if residual == self.residual:
            return self
        shortcut = self.family.shortcuts[self.block][0] if residual else None
        return replace(self, residual=residual, shortcut=shortcut)


def _parse(name: str) -> _Spec:
    match = _NAME.fullmatch(name.strip().lower())
    if match is None:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; names are {_GRAMMAR}, e.g. resnet50, resnet50_v1_c, "
            "resnet34_a, resnet20_b, preact_resnet110, plain18 (`resnet-serve models` lists them)"
        )
    prefix = (match["preact"] or "") + match["kind"]
    depth = int(match["depth"])
    family = _FAMILY_OF_DEPTH.get(depth)
    if family is None:
        choices = "; ".join(
            f"{', '.join(f'{prefix}{d}' for d in f.depths)} ({f.title})"
            for f in _FAMILIES
        )
        raise UnknownArchitectureError(f"unknown architecture {name!r}: no depth {depth}; choose one of {choices}")
    block = family.depths[depth][0]
    residual = match["kind"] == "resnet"
    base = f"{prefix}{depth}{match['v1'] or ''}"
    valid = family.shortcuts[block]
    shortcut = match["shortcut"].upper() if match["shortcut"] else valid[0]
    if not residual and match["shortcut"]:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}: a plain net has no shortcut to choose; use {base}"
        )
    if shortcut not in valid:
        choices = " or ".join(
            f"{base}{'' if option == valid[0] else '_' + option.lower()} (option {option})" for option in valid
        )
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}: option {shortcut} does not apply to "
            f"{family.title} {block}-block nets; choose {choices}"
        )
    return _Spec(
        family=family,
        depth=depth,
        preact=bool(match["preact"]),
        residual=residual,
        version=("v1" if match["v1"] else "v1.5") if block == "bottleneck" else None,
        shortcut=shortcut if residual else None,
    )


def _resolve(name: str, residual: bool | None) -> _Spec:
    spec = _parse(name)
    return spec if residual is None else spec.with_residual(residual)


def _build(
    spec: _Spec,
    *,
    num_classes: int,
    in_channels: int,
    zero_init_last: bool,
) -> nn.Module:
    network = CifarResNet if spec.family.name == "cifar" else ResNet
    return network(
        _BLOCKS[(spec.preact, spec.block)],
        spec.layers,
        num_classes=num_classes,
        in_channels=in_channels,
        # A plain net builds no shortcut, so the option it is given does not matter.
        shortcut=spec.shortcut or "B",
        stride_on_3x3=spec.version != "v1",
        residual=spec.residual,
        zero_init_last=zero_init_last,
    )


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    zero_init_last: bool = False,
    residual: bool | None = None,
) -> nn.Module:
    """Build an architecture by name (see the module docstring for the names).

    Args:
        name: architecture name, e.g. ``resnet50``, ``resnet50_v1_c``, ``preact_resnet110``.
        num_classes: classifier size; defaults to the family's (1000 or 10).
        in_channels: channels of the input image.
        zero_init_last: start every residual branch at zero (each block an identity).
        residual: False removes every shortcut (the plain twin, ``--no-skip``); True adds
            them to a ``plain`` name with the default option; None keeps the name's.

    Raises:
        UnknownArchitectureError: unknown name or an option the architecture does not take.
    """
    spec = _resolve(name, residual)
    return _build(
        spec,
        num_classes=num_classes or spec.family.num_classes,
        in_channels=in_channels,
        zero_init_last=zero_init_last,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on an input of ``input_shape`` (batch included).

    Half the FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts: those of
    convolutions and matrix products, nothing for BatchNorm, activations, pooling, additions or
    biases, which is what torchvision's and fvcore's published figures count. Runs one forward
    pass of zeros in eval mode on the model's device (training flags are restored); on the meta
    device nothing is allocated or computed.
    """
    reference = next(model.parameters(), None)
    x = torch.zeros(
        tuple(input_shape),
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
    )
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for module, was_training in training.items():
            module.training = was_training
    return counter.get_total_flops() // 2


@dataclass
class _Tally:
    """Parameters and MACs added up layer by layer, for one image."""

    params: int = 0
    macs: int = 0

    def conv(self, in_channels: int, out_channels: int, kernel: int, stride: int, side: int) -> int:
        """Add a bias-free, "same"-padded square convolution on a ``side``² input; its output side."""
        out_side = (side - 1) // stride + 1
        weights = in_channels * out_channels * kernel * kernel
        self.params += weights
        self.macs += weights * out_side * out_side
        return out_side

    def batch_norm(self, channels: int) -> None:
        self.params += 2 * channels  # scale and shift; the running statistics are buffers

    def linear(self, in_features: int, out_features: int) -> None:
        self.params += in_features * out_features + out_features
        self.macs += in_features * out_features


def _count(spec: _Spec) -> _Tally:
    """Parameters and MACs of ``spec`` with its default classifier at its default input size,
    layer by layer as ``resnet.py`` and ``blocks.py`` build it.

    Summed from the spec rather than counted on a build: building ResNet-1202 takes seconds
    even on the meta device, and ``resnet-serve models`` lists 104 nets. The tests hold these
    sums to ``count_parameters`` and ``count_macs`` of real builds of every block, shortcut and
    stem variant.
    """
    network = CifarResNet if spec.family.name == "cifar" else ResNet
    widths = network.widths
    bottleneck = spec.block == "bottleneck"
    expansion = 4 if bottleneck else 1
    tally = _Tally()
    if spec.family.name == "cifar":
        side = tally.conv(3, widths[0], 3, 1, spec.family.input_size)
    else:
        side = tally.conv(3, widths[0], 7, 2, spec.family.input_size)
        side = (side - 1) // 2 + 1  # the 3×3, stride-2 max-pool
    if not spec.preact:
        tally.batch_norm(widths[0])
    in_planes = widths[0]
    for stage, (planes, count) in enumerate(zip(widths, spec.layers, strict=True)):
        out_planes = planes * expansion
        for position in range(count):
            stride = 2 if stage > 0 and position == 0 else 1
            reshapes = stride != 1 or in_planes != out_planes
            if spec.residual and (spec.shortcut == "C" or (spec.shortcut == "B" and reshapes)):
                tally.conv(in_planes, out_planes, 1, stride, side)
                if not spec.preact:
                    tally.batch_norm(out_planes)
            # Each convolution but the last is followed by a BatchNorm; a post-activation
            # block also normalises the last, a pre-activation one its input instead.
            if bottleneck:
                stride_1x1, stride_3x3 = (stride, 1) if spec.version == "v1" else (1, stride)
                branch = tally.conv(in_planes, planes, 1, stride_1x1, side)
                tally.batch_norm(planes)
                branch = tally.conv(planes, planes, 3, stride_3x3, branch)
                tally.batch_norm(planes)
                side = tally.conv(planes, out_planes, 1, 1, branch)
            else:
                branch = tally.conv(in_planes, planes, 3, stride, side)
                tally.batch_norm(planes)
                side = tally.conv(planes, out_planes, 3, 1, branch)
            tally.batch_norm(in_planes if spec.preact else out_planes)
            in_planes = out_planes
    if spec.preact:
        tally.batch_norm(in_planes)
    tally.linear(in_planes, spec.family.num_classes)
    return tally


@cache
def _info(spec: _Spec) -> ArchitectureInfo:
    counts = _count(spec)
    return ArchitectureInfo(
        name=spec.name,
        family=spec.family.name,
        depth=spec.depth,
        block=spec.block,
        residual=spec.residual,
        preact=spec.preact,
        version=spec.version,
        shortcut=spec.shortcut,
        default_num_classes=spec.family.num_classes,
        default_input_size=spec.family.input_size,
        params=counts.params,
        macs=counts.macs,
    )


def architecture_info(name: str, *, residual: bool | None = None) -> ArchitectureInfo:
    """Facts about an architecture, summed from its layout without building it (cached, cheap).

    ``residual`` works as in ``create_model``; the returned ``name`` is then the canonical
    name of the result (``architecture_info("resnet34_c", residual=False).name == "plain34"``),
    which is what a checkpoint should record.

    Raises:
        UnknownArchitectureError: unknown name or an option the architecture does not take.
    """
    return _info(_resolve(name, residual))


def _all_specs() -> list[_Spec]:
    specs = []
    for preact in (False, True):
        for family in _FAMILIES:
            for residual in (True, False):
                for depth, (block, _) in family.depths.items():
                    versions: tuple[Version | None, ...] = ("v1.5", "v1") if block == "bottleneck" else (None,)
                    shortcuts: tuple[Shortcut | None, ...] = family.shortcuts[block] if residual else (None,)
                    specs += [
                        _Spec(family, depth, preact, residual, version, shortcut)
                        for version in versions
                        for shortcut in shortcuts
                    ]
    return specs


def list_models() -> list[ArchitectureInfo]:
    """Every architecture under its canonical name: post- then pre-activation, ImageNet then
    CIFAR, residual then plain, by depth."""
    return [_info(spec) for spec in _all_specs()]
