import pytest
import torch

import tscnet
from tscnet.models import cifar_resnet

from conftest import sample_batch


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


# ---- create_model takes the libraries' defaults and keyword arguments --------------------------


def test_omitted_classes_and_channels_are_the_models_own_defaults():
    x = sample_batch("imagenet", size=64)[:2]
    for name in ("tv:resnet18", "timm:resnet26d"):  # ImageNet models: 1000 classes, 3 channels
        model = tscnet.create_model(name, steps="tsc").eval()
        with torch.no_grad():
            assert model(x).shape == (2, 1000), name
    assert tscnet.create_model("cifar_resnet20").fc.out_features == 10  # ours: 10 classes, 3 channels (documented)
    assert tscnet.create_model("cifar_resnet20").conv1.in_channels == 3
    mini = tscnet.create_model("mini_vit_d6")  # timm-registered, 10 classes and 1 channel by default
    assert (mini.num_classes, mini.patch_embed.proj.in_channels) == (10, 1)


def test_timm_keywords_pass_through(monkeypatch):
    import timm

    model = tscnet.create_model("timm:resnet26d", num_classes=7, steps="channel", drop_path_rate=0.1, pretrained=False)
    assert model.layer4[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert tscnet.create_model("mini_vit_d6", img_size=32).patch_embed.img_size == (32, 32)
    seen = {}
    real = timm.create_model

    def record(name, **kwargs):  # pretrained=True would download: record it, build without
        seen.update(kwargs)
        return real(name, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", record)
    tscnet.create_model("resnet18", pretrained=True, steps="tsc")
    assert seen["pretrained"] is True and "num_classes" not in seen and "in_chans" not in seen


def test_torchvision_keywords_pass_through(monkeypatch):
    import torchvision

    model = tscnet.create_model("tv:resnet18", weights=None)  # was: "got multiple values for keyword argument 'weights'"
    assert model.fc.out_features == 1000
    convnext = tscnet.create_model("tv:convnext_tiny", steps="tsc", stochastic_depth_prob=0.2)  # not a ResNet
    assert convnext.classifier[-1].out_features == 1000 and convnext.features[7][-1].stochastic_depth.p > 0.1
    with pytest.raises(KeyError, match="NOPE"):  # torchvision's own error for an unknown weights name
        tscnet.create_model("tv:resnet18", weights="NOPE")
    seen = {}
    real = torchvision.models.get_model

    def record(name, **kwargs):  # weights="DEFAULT" would download: record it, build without
        seen.update(kwargs)
        return real(name, **{**kwargs, "weights": None})

    monkeypatch.setattr(torchvision.models, "get_model", record)
    tscnet.create_model("tv:resnet50", steps="channel", weights="DEFAULT")
    assert seen["weights"] == "DEFAULT" and "num_classes" not in seen


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18"])
def test_a_keyword_the_library_does_not_take_is_its_own_error(name):
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        tscnet.create_model(name, bogus=1)


def test_attach_steps_needs_a_policy():
    with pytest.raises(TypeError, match="steps"):
        tscnet.attach_steps(cifar_resnet(8))  # no default policy: the call is the choice of one
