import pytest
import torch

from resnet_serve.errors import UnknownArchitectureError
from resnet_serve.models import architecture_info, create_model, list_models

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


def test_every_depth_has_a_plain_twin():
    names = {info.name for info in list_models()}
    residual = {n for n in names if n.startswith("resnet")}
    assert {n.replace("resnet", "plain") for n in residual} <= names


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
