"""ResNet for ImageNet-sized inputs (He et al., 2015, Table 1) and for CIFAR-sized ones (Sec. 4.2),
post-activation or pre-activation (He et al., 2016), with the paper's three shortcut options.

Shortcut options (He et al., 2015, Sec. 4.1): "A" zero-pads the identity where the shape
changes (no parameters), "B" projects (1×1 conv) only where the shape changes, "C" projects in
every block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

from resnet_serve.models.blocks import (
    Bottleneck,
    PadShortcut,
    PreActBottleneck,
    ResidualBlock,
    conv1x1,
    conv3x3,
)

Shortcut = Literal["A", "B", "C"]


def _make_shortcut(
    option: Shortcut, in_planes: int, out_planes: int, stride: int, *, preact: bool
) -> nn.Module | None:
    reshapes = stride != 1 or in_planes != out_planes
    if option == "C" or (option == "B" and reshapes):
        projection = conv1x1(in_planes, out_planes, stride)
        # In a pre-activation net the next block normalises the sum, so the projection has no BN.
        return projection if preact else nn.Sequential(projection, nn.BatchNorm2d(out_planes))
    if option == "A" and reshapes:
        return PadShortcut(in_planes, out_planes, stride)
    return None


def _init_weights(model: nn.Module, *, zero_init_last: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Starting each residual branch at zero makes every block an identity at init, which
    # helps large-batch training; it would silence a plain net, so it only applies with skips.
    if zero_init_last:
        for m in model.modules():
            if isinstance(m, ResidualBlock) and m.residual:
                m.zero_init_last()


class ResNet(nn.Module):
    """ImageNet-style ResNet: 7×7 stem, max-pool, four stages, global average pool, classifier.

    With pre-activation blocks the stem is the bare convolution and max-pool (each block
    normalises its own input) and one BN-ReLU follows the last stage, whose sum nothing else
    normalises.

    Args:
        block: a block type from ``blocks`` (basic for ResNet-18/34, bottleneck for deeper).
        layers: number of blocks in each stage.
        num_classes: size of the classifier.
        in_channels: channels of the input image.
        shortcut: the paper's option "A", "B" or "C" (see the module docstring).
        stride_on_3x3: bottlenecks only: True for v1.5 (torchvision), False for v1 (the paper).
        residual: False builds the plain twin (no shortcuts, no projections).
        zero_init_last: zero the last scale of every residual branch.
    """

    widths: ClassVar[tuple[int, ...]] = (64, 128, 256, 512)

    def __init__(
        self,
        block: type[ResidualBlock],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        shortcut: Shortcut = "B",
        stride_on_3x3: bool = True,
        residual: bool = True,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(self.widths):
            raise ValueError(f"{type(self).__name__} has {len(self.widths)} stages, got layers={list(layers)}")
        self.residual = residual
        self.preact = block.preact
        self.conv1, stem_pool = self._stem(in_channels)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = stem_pool
        block_options = (
            {"stride_on_3x3": stride_on_3x3} if issubclass(block, (Bottleneck, PreActBottleneck)) else {}
        )
        in_planes = self.widths[0]
        for index, (planes, count) in enumerate(zip(self.widths, layers, strict=True), start=1):
            out_planes = planes * block.expansion
            stage = []
            for position in range(count):
                stride = 2 if index > 1 and position == 0 else 1
                downsample = (
                    _make_shortcut(shortcut, in_planes, out_planes, stride, preact=self.preact)
                    if residual
                    else None
                )
                stage.append(block(in_planes, planes, stride, downsample, residual, **block_options))
                in_planes = out_planes
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.num_features = in_planes
        if self.preact:
            self.final_bn = nn.BatchNorm2d(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self, zero_init_last=zero_init_last)

    def _stem(self, in_channels: int) -> tuple[nn.Conv2d, nn.Module]:
        conv = nn.Conv2d(in_channels, self.widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        return conv, nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = self.relu(self.bn1(x))
        x = self.maxpool(x)
        for index in range(1, len(self.widths) + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.relu(self.final_bn(x)) if self.preact else x

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNet(ResNet):
    """The paper's CIFAR ResNet: 3×3 stem, three stages at 16/32/64 channels (times the
    block's expansion), global average pool, classifier. With n blocks per stage the depth is
    6n+2 for basic blocks (He et al., 2015, Sec. 4.2) and 9n+2 for bottlenecks (ResNet-164
    and -1001, He et al., 2016).

    Args:
        block: a block type from ``blocks``.
        layers: number of blocks in each of the three stages.
        num_classes: size of the classifier.
        in_channels: channels of the input image.
        shortcut: the paper's option "A" (its choice for CIFAR), "B" or "C".
        stride_on_3x3: bottlenecks only: True for v1.5 (torchvision), False for v1 (the paper).
        residual: False builds the plain twin.
        zero_init_last: zero the last scale of every residual branch.
    """

    widths = (16, 32, 64)

    def __init__(
        self,
        block: type[ResidualBlock],
        layers: Sequence[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: Shortcut = "A",
        stride_on_3x3: bool = True,
        residual: bool = True,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__(
            block,
            layers,
            num_classes=num_classes,
            in_channels=in_channels,
            shortcut=shortcut,
            stride_on_3x3=stride_on_3x3,
            residual=residual,
            zero_init_last=zero_init_last,
        )

    def _stem(self, in_channels: int) -> tuple[nn.Conv2d, nn.Module]:
        # 32² inputs are small already: the stem keeps full resolution and does not pool.
        return conv3x3(in_channels, self.widths[0]), nn.Identity()
