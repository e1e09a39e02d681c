"""Residual blocks, post-activation (He et al., 2015) and pre-activation (He et al., 2016).

Every block takes its shortcut ready-made (``downsample``: None for identity, a projection, or
a zero-padding ``PadShortcut``), so the network alone decides the paper's shortcut option, and
has a ``residual`` switch that removes the shortcut to make the "plain" twin.

Attribute names follow torchvision (conv1/bn1/conv2/bn2/conv3/bn3/downsample) so that
torchvision and timm state dicts load as they are.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """What the network needs to know of a block type before and after building one.

    Subclasses register their own modules (in torchvision's order, so state dicts list keys
    the same way) and set ``downsample`` and ``residual``.
    """

    expansion: ClassVar[int]  # output channels per unit of ``planes``
    preact: ClassVar[bool]  # BN-ReLU before each conv, and nothing after the addition
    downsample: nn.Module | None
    residual: bool

    def zero_init_last(self) -> None:
        """Zero the branch's last scale so the block starts as its shortcut alone."""
        raise NotImplementedError


class BasicBlock(ResidualBlock):
    """Two 3×3 convolutions: y = relu(F(x) + shortcut(x)), or relu(F(x)) when plain.

    Args:
        in_planes: channels entering the block.
        planes: channels of both convolutions.
        stride: stride of the first convolution.
        downsample: the shortcut when it is not the identity (projection or zero-padding).
        residual: False builds the plain twin: no shortcut at all.
    """

    expansion = 1
    preact = False

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(ResidualBlock):
    """1×1 reduce → 3×3 → 1×1 expand (×4).

    By default the stride sits on the 3×3 convolution rather than on the first 1×1 as in the
    paper: this is torchvision's "ResNet v1.5", slightly more accurate, and what its
    checkpoints expect. ``stride_on_3x3=False`` builds the paper's v1 block, which has the
    same weights but computes its first 1×1 at the lower resolution (fewer MACs).

    Args:
        in_planes: channels entering the block.
        planes: width of the 3×3 convolution; the block outputs ``planes * 4`` channels.
        stride: stride of the block.
        downsample: the shortcut when it is not the identity (projection or zero-padding).
        residual: False builds the plain twin: no shortcut at all.
        stride_on_3x3: True for v1.5 (torchvision), False for v1 (the paper).
    """

    expansion = 4
    preact = False

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        *,
        stride_on_3x3: bool = True,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (1, stride) if stride_on_3x3 else (stride, 1)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class PreActBasicBlock(ResidualBlock):
    """Pre-activation basic block (He et al., 2016): y = x + conv(relu(bn(conv(relu(bn(x)))))).

    Nothing follows the addition, so the identity path runs unchanged from block to block. A
    shortcut that is not the identity reads the pre-activated input, as the paper does for its
    projections, so that it too sees normalised features.

    Args:
        in_planes: channels entering the block.
        planes: channels of both convolutions.
        stride: stride of the first convolution.
        downsample: the shortcut when it is not the identity (projection or zero-padding).
        residual: False builds the plain twin: no shortcut at all.
    """

    expansion = 1
    preact = True

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        # The branch ends in a convolution, not a BatchNorm: zeroing it has the same effect.
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut if self.residual else out


class PreActBottleneck(ResidualBlock):
    """Pre-activation bottleneck (He et al., 2016): BN-ReLU-1×1, BN-ReLU-3×3, BN-ReLU-1×1 (×4).

    The stride placement and the shortcut's input follow ``Bottleneck`` and
    ``PreActBasicBlock``.

    Args:
        in_planes: channels entering the block.
        planes: width of the 3×3 convolution; the block outputs ``planes * 4`` channels.
        stride: stride of the block.
        downsample: the shortcut when it is not the identity (projection or zero-padding).
        residual: False builds the plain twin: no shortcut at all.
        stride_on_3x3: True for v1.5 (torchvision), False for v1 (the paper).
    """

    expansion = 4
    preact = True

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
        *,
        stride_on_3x3: bool = True,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (1, stride) if stride_on_3x3 else (stride, 1)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut if self.residual else out


class PadShortcut(nn.Module):
    """The paper's option A: a parameter-free shortcut that subsamples and zero-pads channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))
