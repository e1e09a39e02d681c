"""Residual blocks, each with a switch that removes its shortcut to make the "plain" twin.

Attribute names follow torchvision (conv1/bn1/conv2/bn2/conv3/bn3/downsample) so that
torchvision and timm state dicts load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions: y = relu(F(x) + shortcut(x)), or relu(F(x)) when plain.

    Args:
        in_planes: channels entering the block.
        planes: channels of both convolutions.
        stride: stride of the first convolution.
        downsample: projection for the shortcut when shape changes; None means identity.
        residual: False builds the plain twin: no shortcut at all.
    """

    expansion = 1

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


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 → 1×1 expand (×4), with the stride on the 3×3 conv.

    The stride sits on the 3×3 convolution rather than the first 1×1 as in the paper: this is
    torchvision's "ResNet v1.5", slightly more accurate, and what its checkpoints expect.

    Args:
        in_planes: channels entering the block.
        planes: width of the 3×3 convolution; the block outputs ``planes * 4`` channels.
        stride: stride of the 3×3 convolution.
        downsample: projection for the shortcut when shape changes; None means identity.
        residual: False builds the plain twin: no shortcut at all.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
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


class PadShortcut(nn.Module):
    """The paper's option A: a parameter-free shortcut that subsamples and zero-pads channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class CifarBasicBlock(BasicBlock):
    """The CIFAR nets' basic block: its shortcut is option A when the shape changes."""

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, residual: bool = True
    ) -> None:
        shortcut = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else None
        )
        super().__init__(in_planes, planes, stride, downsample=shortcut, residual=residual)
