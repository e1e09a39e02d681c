"""BatchNorm folding on every architecture family of the registry, checked on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samples import fashion_mnist, with_realistic_batchnorm

from resnet_serve.errors import ExportError
from resnet_serve.fold import fold_batchnorm
from resnet_serve.models import create_model


def inputs_for(name: str) -> tuple[int, torch.Tensor]:
    if name.startswith(("resnet2", "plain2")):
        return 1, torch.from_numpy(fashion_mnist(16))
    # ImageNet nets: real images at 64×64 and three channels keep the test fast.
    images = F.interpolate(torch.from_numpy(fashion_mnist(4)), size=64, mode="bilinear", align_corners=False)
    return 3, images.repeat(1, 3, 1, 1)


# Folding is exact arithmetic, but randomly initialised ImageNet nets amplify the float32
# rounding of their weights: moving every weight by about one ulp alone shifts resnet50's
# logits by ~6e-5 and plain50's by ~1e-3. So those are checked in float64, where the fold must
# be exact to rounding, and the CIFAR nets at the float32 tolerance.
@pytest.mark.parametrize(
    ("name", "dtype", "atol"),
    [
        ("resnet20", torch.float32, 1e-5),
        ("plain20", torch.float32, 1e-5),
        ("resnet18", torch.float64, 1e-10),
        ("resnet50", torch.float64, 1e-10),
        ("plain50", torch.float64, 1e-10),
    ],
)
def test_folded_model_matches_original(name: str, dtype: torch.dtype, atol: float) -> None:
    torch.manual_seed(0)
    in_channels, images = inputs_for(name)
    model = create_model(name, num_classes=10, in_channels=in_channels).to(dtype)
    images = images.to(dtype)
    model = with_realistic_batchnorm(model, images, seed=1)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    result = fold_batchnorm(model)

    assert result.folded == len(batchnorms)
    assert result.unfolded == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None and m.weight.dtype == dtype for m in convs)
    # Each fold drops γ and β (2C) and adds a conv bias (C).
    assert result.params_after == result.params_before - sum(b.num_features for b in batchnorms)
    with torch.no_grad():
        expected, actual = model(images), result.model(images)
    assert expected.abs().max() > 0.1  # the comparison below is not between near-zero logits
    assert (actual - expected).abs().max().item() <= atol
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_input_model_is_untouched_and_names_are_kept() -> None:
    model = create_model("resnet18", num_classes=10)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = fold_batchnorm(model)

    assert model.training and not result.model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    folded_keys = set(result.model.state_dict())
    conv_weights = {k for k in before if k.endswith(".weight") and "conv" in k}
    assert conv_weights | {"layer2.0.downsample.0.weight"} <= folded_keys
    assert {"conv1.bias", "layer3.1.conv2.bias", "layer2.0.downsample.0.bias"} <= folded_keys
    assert isinstance(result.model.layer2[0].downsample[1], nn.Identity)


class _SharedConvOutput(nn.Module):
    """A conv whose output is read by a BatchNorm and by an addition: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_batchnorm_without_a_foldable_conv_is_reported_and_kept() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 12, 12)
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), _SharedConvOutput()
    )
    model[3].conv = nn.Conv2d(8, 3, 3, padding=1)
    model = with_realistic_batchnorm(model, images, seed=2)

    result = fold_batchnorm(model)

    assert result.folded == 1
    assert result.unfolded == ["0", "3.bn"]
    assert isinstance(result.model[2], nn.Identity)
    with torch.no_grad():
        assert (result.model(images) - model(images)).abs().max().item() <= 1e-5


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_model_raises_export_error() -> None:
    with pytest.raises(ExportError, match="cannot trace _DataDependent"):
        fold_batchnorm(_DataDependent())
