import pytest
import torch

from resnet_serve.errors import UnknownArchitectureError
from resnet_serve.models import (
    ArchitectureInfo,
    architecture_info,
    count_macs,
    count_parameters,
    create_model,
    list_models,
)

# torchvision's published counts for the 1000-class ImageNet nets.
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# He et al. 2015, Table 6: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M.
CIFAR_PARAMS_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7}


@pytest.mark.parametrize("name,expected", IMAGENET_PARAMS.items())
def test_imagenet_parameter_counts_match_torchvision(name, expected):
    assert architecture_info(name).params == expected


@pytest.mark.parametrize("name,millions", CIFAR_PARAMS_MILLIONS.items())
def test_cifar_parameter_counts_match_the_paper(name, millions):
    params = architecture_info(name).params
    digits = 1 if millions >= 1 else 2
    assert round(params / 1e6, digits) == millions


def test_every_architecture_has_a_plain_twin():
    infos = list_models()
    names = {info.name for info in infos}
    assert {architecture_info(info.name, residual=False).name for info in infos} <= names
    assert {"plain18", "plain110", "preact_plain164"} <= names


def test_plain_twin_has_no_shortcut_parameters():
    # Option-A shortcuts are parameter-free, so the CIFAR twins have equal counts;
    # ImageNet plain nets drop the projection shortcuts.
    assert architecture_info("plain20").params == architecture_info("resnet20").params
    assert architecture_info("plain50").params < architecture_info("resnet50").params


def test_plain_and_residual_compute_different_functions():
    torch.manual_seed(0)
    residual = create_model("resnet20", in_channels=1).eval()
    plain = create_model("plain20", in_channels=1).eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(residual(x), plain(x))


@pytest.mark.parametrize(
    "name,shape,classes",
    [("resnet18", (2, 3, 64, 64), 7), ("resnet50", (1, 3, 64, 64), 1000), ("resnet20", (3, 1, 28, 28), 10), ("plain110", (1, 3, 32, 32), 100)],
)
def test_output_shape(name, shape, classes):
    model = create_model(name, num_classes=classes, in_channels=shape[1]).eval()
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (shape[0], classes)


def test_features_and_head_split_gives_embeddings():
    model = create_model("resnet50").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert model.forward_head(features, pre_logits=True).shape == (1, 2048)
        assert torch.equal(model.forward_head(features), model(x))


def test_state_dict_uses_torchvision_key_names():
    keys = set(create_model("resnet50").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight", "fc.bias"} <= keys


def test_zero_init_last_makes_residual_blocks_identity_at_init():
    model = create_model("resnet18", zero_init_last=True)
    assert all(not block.bn2.weight.detach().any() for layer in (model.layer1, model.layer4) for block in layer)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UnknownArchitectureError, match="resnet20"):
        create_model("resnet19")


# torchvision's published GMACs (its "GFLOPS" column) at 224².
IMAGENET_GMACS = {"resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514}


@pytest.mark.parametrize("name,gmacs", IMAGENET_GMACS.items())
def test_imagenet_macs_match_torchvision(name, gmacs):
    assert round(architecture_info(name).macs / 1e9, 3) == gmacs


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_v1_moves_the_stride_to_the_first_1x1(depth):
    v15, v1 = architecture_info(f"resnet{depth}"), architecture_info(f"resnet{depth}_v1")
    assert (v15.version, v1.version) == ("v1.5", "v1")
    assert v1.params == v15.params
    # Striding before the 1×1 computes it at a quarter of the positions.
    assert v1.macs < v15.macs
    first = create_model(f"resnet{depth}_v1").layer2[0]
    assert (first.conv1.stride, first.conv2.stride) == ((2, 2), (1, 1))


def test_shortcut_options_a_b_c():
    a, b, c = (architecture_info(f"resnet34{suffix}") for suffix in ("_a", "", "_c"))
    assert (a.shortcut, b.shortcut, c.shortcut) == ("A", "B", "C")
    assert a.params == architecture_info("plain34").params < b.params < c.params
    assert architecture_info("resnet50_c").params > architecture_info("resnet50").params
    # Option C projects in every block: 3 + 4 + 6 + 3 projections in ResNet-34.
    model = create_model("resnet34_c")
    assert sum(block.downsample is not None for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage) == 16


def test_cifar_option_b_adds_two_projections():
    # 16→32 and 32→64: a 1×1 conv and a BatchNorm (scale and shift) each.
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert architecture_info("resnet20_b").params == architecture_info("resnet20").params + projections


def test_explicit_default_suffixes_name_the_same_architecture():
    assert architecture_info("resnet50_b").name == "resnet50"
    assert architecture_info("resnet20_a").name == "resnet20"
    assert architecture_info("ResNet18_v1").name == "resnet18"  # basic blocks are the same in v1 and v1.5


@pytest.mark.parametrize(
    "name,choices",
    [
        ("resnet50_a", ["resnet50 (option B)", "resnet50_c (option C)"]),
        ("resnet101_v1_a", ["resnet101_v1 (option B)", "resnet101_v1_c (option C)"]),
        ("resnet20_c", ["resnet20 (option A)", "resnet20_b (option B)"]),
        ("preact_resnet164_a", ["preact_resnet164 (option B)"]),
        ("plain34_c", ["use plain34"]),
        ("resnet21", ["resnet18", "resnet1202", "resnet164"]),
        ("resnet50_x", ["[preact_](resnet|plain)<depth>[_v1][_a|_b|_c]"]),
    ],
)
def test_invalid_combinations_name_the_valid_choices(name, choices):
    with pytest.raises(UnknownArchitectureError) as error:
        create_model(name)
    message = str(error.value)
    assert "\n" not in message and name in message
    assert all(choice in message for choice in choices)


def test_deep_cifar_nets_match_the_papers_parameter_counts():
    # He et al. 2015, Table 6: ResNet-1202 has 19.4M; He et al. 2016, Table 2: pre-activation
    # ResNet-110 1.7M, ResNet-164 1.7M, ResNet-1001 10.2M (we count 10.33M, as other
    # reimplementations do: the paper does not say how it counted).
    assert round(architecture_info("resnet1202").params / 1e6, 1) == 19.4
    assert round(architecture_info("preact_resnet110").params / 1e6, 1) == 1.7
    assert round(architecture_info("preact_resnet164").params / 1e6, 1) == 1.7
    assert architecture_info("preact_resnet1001").params == pytest.approx(10.2e6, rel=0.015)
    assert architecture_info("preact_resnet164").block == "bottleneck"


def _shallowest_of_each_layout() -> list[str]:
    """One name per combination of family, block, pre-activation, shortcuts, version and option:
    the registry's closed-form sums differ between these, and only repeat with depth."""
    shallowest: dict[tuple, ArchitectureInfo] = {}
    for info in list_models():
        layout = (info.family, info.block, info.preact, info.residual, info.version, info.shortcut)
        if layout not in shallowest or info.depth < shallowest[layout].depth:
            shallowest[layout] = info
    return [info.name for info in shallowest.values()]


@pytest.mark.parametrize("name", [*_shallowest_of_each_layout(), "resnet110_b"])
def test_registry_counts_equal_counting_the_built_model(name):
    # The registry sums its figures from the spec; torch's own counters on a full build agree.
    info = architecture_info(name)
    with torch.device("meta"):
        model = create_model(name)
    assert count_parameters(model) == info.params
    size = info.default_input_size
    assert count_macs(model, (1, 3, size, size)) == info.macs


def test_count_macs_counts_convolutions_and_linear_layers_only():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, groups=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )
    expected = 2 * (8 * 10 * 10) * 3 * 9 + 2 * (8 * 5 * 5) * 2 * 9 + 2 * 8 * 5
    assert count_macs(model, (2, 3, 10, 10)) == expected
    assert model.training and model[1].running_mean.count_nonzero() == 0  # ran in eval mode, flags restored
    assert count_macs(model.to("meta"), (2, 3, 10, 10)) == expected  # shapes alone suffice


@pytest.mark.parametrize(
    "name,shape,classes",
    [("preact_resnet18", (2, 3, 64, 64), 7), ("preact_resnet50_v1", (1, 3, 64, 64), 1000), ("preact_resnet20_b", (2, 1, 28, 28), 10), ("preact_resnet164", (1, 3, 32, 32), 100)],
)
def test_preact_output_shape(name, shape, classes):
    model = create_model(name, num_classes=classes, in_channels=shape[1]).eval()
    with torch.no_grad():
        assert model(torch.randn(shape)).shape == (shape[0], classes)
    assert model.forward_head(model.forward_features(torch.randn(shape)), pre_logits=True).shape[1] == model.num_features


def test_residual_false_builds_the_plain_twin_of_any_architecture():
    assert architecture_info("resnet34_c", residual=False).name == "plain34"
    assert architecture_info("preact_resnet50_v1", residual=False).name == "preact_plain50_v1"
    assert architecture_info("plain20", residual=True).name == "resnet20"
    model = create_model("resnet50_c", residual=False)
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    assert not any(block.residual or block.downsample is not None for block in blocks)
    assert count_parameters(model) == architecture_info("plain50").params


def test_zero_init_last_on_preact_blocks_zeroes_the_last_convolution():
    model = create_model("preact_resnet164", zero_init_last=True)
    assert all(not block.conv3.weight.detach().any() for block in model.layer2)


def test_list_models_has_every_variant_under_canonical_names():
    infos = list_models()
    names = [info.name for info in infos]
    assert len(names) == len(set(names))
    assert {"resnet50_v1_c", "resnet34_a", "resnet20_b", "resnet1202", "preact_resnet1001", "preact_plain18"} <= set(names)
    assert all(architecture_info(name).name == name for name in names)
