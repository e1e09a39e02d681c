"""ResNet for ImageNet-sized inputs (He et al., 2015, Table 1) and for CIFAR-sized ones (Sec. 4.2)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from resnet_serve.models.blocks import BasicBlock, Bottleneck, CifarBasicBlock, conv1x1


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
            if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                m.zero_init_last()


class ResNet(nn.Module):
    """ImageNet-style ResNet: 7×7 stem, max-pool, four stages, global average pool, classifier.

    Args:
        block: BasicBlock (ResNet-18/34) or Bottleneck (ResNet-50/101/152).
        layers: number of blocks in each of the four stages.
        num_classes: size of the classifier.
        in_channels: channels of the input image.
        residual: False builds the plain twin (no shortcuts, no projections).
        zero_init_last: zero the last BatchNorm of every residual branch.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        residual: bool = True,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self, zero_init_last=zero_init_last)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        # A projection only where the shortcut must change shape (the paper's option B).
        if self.residual and (stride != 1 or self.in_planes != out_planes):
            downsample = nn.Sequential(
                conv1x1(self.in_planes, out_planes, stride), nn.BatchNorm2d(out_planes)
            )
        stage = [block(self.in_planes, planes, stride, downsample, self.residual)]
        self.in_planes = out_planes
        stage += [
            block(self.in_planes, planes, residual=self.residual) for _ in range(1, blocks)
        ]
        return nn.Sequential(*stage)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNet(nn.Module):
    """The paper's CIFAR ResNet-(6n+2): 3×3 stem, three stages of n basic blocks at 16/32/64
    channels, option-A shortcuts, global average pool, classifier.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: size of the classifier.
        in_channels: channels of the input image.
        residual: False builds the plain twin.
        zero_init_last: zero the last BatchNorm of every residual branch.
    """

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        residual: bool = True,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        widths = (16, 32, 64)
        in_planes = 16
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            stage = [CifarBasicBlock(in_planes, width, stride, residual=residual)]
            stage += [CifarBasicBlock(width, width, residual=residual) for _ in range(1, n)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            in_planes = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self, zero_init_last=zero_init_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
