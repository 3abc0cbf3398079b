import pytest
import torch

import tscnet
from tscnet.models import cifar_resnet


@pytest.mark.parametrize(
    "name, millions",
    [("cifar_resnet20", 0.27), ("cifar_resnet32", 0.46), ("cifar_resnet44", 0.66), ("cifar_resnet56", 0.85),
     ("cifar_resnet110", 1.7), pytest.param("cifar_resnet1202", 19.4, marks=pytest.mark.slow),
     ("cifar_preact_resnet164", 1.7)],
)
def test_cifar_parameter_counts_match_reference(name, millions):
    model = tscnet.create_model(name, num_classes=10)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(count, 2 if millions < 1 else 1) == millions


@pytest.mark.parametrize("block, preact", [("basic", False), ("basic", True), ("bottleneck", False), ("bottleneck", True)])
def test_generic_cifar_resnet_runs_on_fashion_mnist_shape(block, preact):
    depth = 8 if block == "basic" else 11
    model = cifar_resnet(depth, block=block, preact=preact, num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_bad_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(ValueError, match="9n\\+2"):
        cifar_resnet(21, block="bottleneck")


def test_unknown_model_lists_closest_names():
    with pytest.raises(ValueError, match="cifar_resnet20"):
        tscnet.create_model("cifar_resnet21")
    with pytest.raises(ValueError, match="tv:resnet50"):
        tscnet.create_model("tv:resnet5O")


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown step policy 'tcs'.*tsc"):
        tscnet.create_model("cifar_resnet20", steps="tcs")
    with pytest.raises(ValueError, match="hidden"):
        tscnet.create_model("cifar_resnet20", steps="tsc:hiden=3")


@pytest.mark.parametrize("name", ["timm:resnet18", "tv:resnet18", "resnet18"])
def test_imagenet_families_take_in_chans_and_classes(name):
    model = tscnet.create_model(name, num_classes=5, in_chans=1, steps="tsc")
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)
