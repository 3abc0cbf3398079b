"""Stepped networks taken apart as backbones: every wrapper, with every policy, trains and folds.

Where the policy lives (a child of the first block's step site) must survive the everyday ways a
ResNet backbone is pulled out of a classifier: timm ``features_only`` (attached before or after
wrapping) and ``forward_intermediates``, torchvision's ``IntermediateLayerGetter`` and FX
``create_feature_extractor``, ``copy.deepcopy``. Each test checks the same three things: the
features equal those of the whole stepped network, the policy's parameters are among the
wrapper's and receive gradients, and the folded wrapper loads strictly into the stock one.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from timm.models import FeatureListNet
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.feature_extraction import create_feature_extractor

import tscnet

from conftest import sample_batch
from stepping_utils import randomize_bn, randomize_steps, rel_err, write_random_profile

POLICIES = ["fixed:0.5", "depth:0.5", "scalar:0.5", "channel", "layerscale", "profile", "mlp", "tsc",
            "tsc:feedback=explicit"]
# The quick tier (pytest -m "not slow") takes the paper's controller; the full suite every policy.
EVERY_POLICY = [p if p == "tsc" else pytest.param(p, marks=pytest.mark.slow) for p in POLICIES]
RETURN = {"layer2": "c3", "layer4": "c5"}


def _spec(policy: str, model: nn.Module, tmp_path) -> str:
    """``policy``, with ``profile`` pointing at a random profile of ``model``'s blocks."""
    return f"profile:{write_random_profile(model, tmp_path / 'steps.json')}" if policy == "profile" else policy


def _prepare(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and steps, so that a wrong step or fold shows in the outputs."""
    randomize_bn(model)
    if tscnet.get_policy(model) is not None:
        randomize_steps(model)
    return model


def _policy_parameters_train(wrapper: nn.Module, policy) -> None:
    """The policy's parameters are the wrapper's, and the last backward reached every one of them."""
    own = {id(p) for p in wrapper.parameters()}
    for name, p in policy.named_parameters():
        assert id(p) in own, f"policy parameter {name} is not among the wrapper's parameters"
        assert p.grad is not None and p.grad.abs().sum() > 0, f"policy parameter {name} got no gradient"


def _features_loss(features) -> torch.Tensor:
    values = features.values() if isinstance(features, dict) else features
    return sum(f.square().mean() for f in values)


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_timm_features_only_attached_before_or_after_wrapping(policy, tmp_path, one_thread):
    torch.manual_seed(0)
    x = sample_batch("imagenet", size=64)[:2]
    # Before wrapping: a stepped classifier, then timm's feature wrapper around it.
    whole = timm.create_model("resnet18", zero_init_last=False)
    spec = _spec(policy, whole, tmp_path)
    whole = _prepare(tscnet.attach_steps(whole, spec))
    before = FeatureListNet(whole, out_indices=(1, 2, 3, 4))
    # After wrapping: timm's features_only model, then the steps (the same weights and steps).
    after = tscnet.attach_steps(timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4)), spec)
    after.load_state_dict(before.state_dict(), strict=True)
    assert tscnet.stepping.policy_name(after) == tscnet.stepping.policy_name(whole) == "layer1.0.bn2.step_policy"

    for wrapper in (before, after):
        wrapper.zero_grad(set_to_none=True)
        _features_loss(wrapper.train()(x)).backward()
        _policy_parameters_train(wrapper, tscnet.get_policy(wrapper))
    with torch.no_grad():
        reference = whole.eval().forward_intermediates(x, indices=(1, 2, 3, 4), intermediates_only=True)
        for wrapper in (before, after):
            for got, want in zip(wrapper.eval()(x), reference):
                torch.testing.assert_close(got, want)
        stock = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4)).eval()
        stock.load_state_dict(tscnet.fold_steps(after).state_dict(), strict=True)
        for got, want in zip(stock(x), reference):
            assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_torchvision_feature_extractors_fx_and_intermediate_layer_getter(policy, tmp_path, one_thread):
    torch.manual_seed(0)
    x = sample_batch("imagenet", size=64)[:2]
    vanilla = torchvision.models.resnet18()
    spec = _spec(policy, vanilla, tmp_path)
    model = _prepare(tscnet.attach_steps(copy.deepcopy(vanilla), spec))
    fx = create_feature_extractor(model, RETURN)              # FX symbolic trace of the stepped model
    getter = IntermediateLayerGetter(model, RETURN)           # attached before wrapping
    after = tscnet.attach_steps(IntermediateLayerGetter(copy.deepcopy(vanilla), RETURN), spec)  # after
    after.load_state_dict(getter.state_dict(), strict=True)
    assert "layer1.0.bn2.step_policy" in dict(fx.named_modules())

    # Train mode: the same features, gradients and BN statistics through every wrapper.
    runs = {}
    for name, wrapper in (("fx", fx), ("getter", getter), ("after", after)):
        state = copy.deepcopy(wrapper.state_dict())
        wrapper.zero_grad(set_to_none=True)
        out = wrapper.train()(x)
        _features_loss(out).backward()
        _policy_parameters_train(wrapper, tscnet.get_policy(wrapper))
        runs[name] = ({k: v.detach() for k, v in out.items()}, copy.deepcopy(wrapper.state_dict()))
        wrapper.load_state_dict(state)  # undo the BN statistics update for the next wrapper
    for name in ("fx", "after"):
        for key in RETURN.values():
            torch.testing.assert_close(runs[name][0][key], runs["getter"][0][key])
        for key, value in runs["getter"][1].items():
            torch.testing.assert_close(runs[name][1][key], value, msg=key)

    with torch.no_grad():
        reference = getter.eval()(x)
        for got in (fx.eval()(x), after.eval()(x)):
            for key, value in reference.items():
                torch.testing.assert_close(got[key], value)
        # Traced in train mode, run in eval mode: the BN sites are graph leaves that read their mode when run.
        traced = torch.fx.symbolic_trace(model.train())
        torch.testing.assert_close(traced.eval()(x), model.eval()(x))
        stock = IntermediateLayerGetter(torchvision.models.resnet18(), RETURN).eval()
        stock.load_state_dict(tscnet.fold_steps(after).state_dict(), strict=True)
        for key, value in stock(x).items():
            assert rel_err(value, reference[key]) < 1e-5


@pytest.mark.parametrize("policy", ["tsc"] + [pytest.param(p, marks=pytest.mark.slow)
                                             for p in ("channel", "tsc:feedback=explicit")])
def test_deep_copies_are_independent_stepped_models(policy, one_thread):
    torch.manual_seed(0)
    x = sample_batch("cifar10")[:4]
    model = _prepare(tscnet.create_model("cifar_resnet20", steps=policy))
    clone = copy.deepcopy(model)
    policy_module, clone_policy = tscnet.get_policy(model), tscnet.get_policy(clone)
    assert clone_policy is not policy_module
    assert all(site.__dict__["_step_policy"] is clone_policy for site in clone_policy.sites)
    assert all(b.block in set(clone.modules()) for b in clone_policy.branches)
    model.eval()
    with torch.no_grad():
        before = model(x)
    optimizer = torch.optim.SGD(clone.parameters(), lr=0.5)
    clone.train()(x).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # training the copy left the original alone
        assert rel_err(clone.eval()(x), before) > 1e-4
        assert rel_err(tscnet.fold_steps(clone)(x), clone(x)) < 1e-5


def test_a_part_without_the_first_block_is_refused_and_several_policies_fold_together(one_thread):
    model = tscnet.create_model("cifar_resnet20", steps="tsc")
    with pytest.raises(RuntimeError, match="first stepped block"):
        tscnet.get_policy(nn.Sequential(model.layer2, model.layer3))
    # Two backbones in one network, each with its own steps: both fold, nothing stepped remains.
    torch.manual_seed(0)
    pair = nn.ModuleDict({"a": tscnet.create_model("cifar_resnet20"), "b": tscnet.create_model("cifar_resnet20")})
    stock = copy.deepcopy(pair)
    for part, spec in (("a", "tsc"), ("b", "channel")):
        _prepare(tscnet.attach_steps(pair[part], spec))
    with pytest.raises(ValueError, match="2 step policies"):
        tscnet.get_policy(pair)
    assert sorted(tscnet.stepping.get_policies(pair)) == ["a.layer1.0.bn2.step_policy", "b.layer1.0.bn2.step_policy"]
    folded = tscnet.fold_steps(pair)
    stock.load_state_dict(folded.state_dict(), strict=True)
    x = sample_batch("cifar10")[:4]
    with torch.no_grad():
        for part in ("a", "b"):
            assert rel_err(stock[part].eval()(x), pair[part].eval()(x)) < 1e-5


def test_frozen_batch_norm_backbone_trains_its_steps_and_folds(one_thread):
    # resnet_fpn_backbone freezes its BNs (torchvision's default for pretrained detectors): the
    # steps enter through the frozen affine buffers and train; γ, β stay frozen.
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    stock = copy.deepcopy(backbone).eval()
    tscnet.attach_steps(backbone.body, "tsc")
    randomize_steps(backbone)
    x = sample_batch("imagenet", size=64)[:2]
    _features_loss(backbone(x)).backward()
    _policy_parameters_train(backbone, tscnet.get_policy(backbone))
    stock.load_state_dict(tscnet.fold_steps(backbone).state_dict(), strict=True)
    with torch.no_grad():
        want = backbone.eval()(x)
        for key, value in stock(x).items():
            assert rel_err(value, want[key]) < 1e-5


def test_torchscript_refuses_a_stepped_model_in_one_line():
    model = tscnet.create_model("tv:resnet18", steps="tsc")
    with pytest.raises(RuntimeError, match="fold_steps") as error:
        torch.jit.script(model)
    assert len(str(error.value).splitlines()) == 1


OTHER_BACKBONES = ["resnet18", "seresnet50", "resnext50_32x4d", "resnet50d", "tv:resnet18", "tv:resnext50_32x4d"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", OTHER_BACKBONES)
def test_other_backbones_taken_apart_with_every_policy(name, policy, tmp_path, one_thread):
    """Features of the wrapped stepped backbone = the whole network's; policy trains; fold is stock."""
    torch.manual_seed(0)
    x = sample_batch("imagenet", size=64)[:2]
    vanilla = tscnet.create_model(name, num_classes=10)
    spec = _spec(policy, vanilla, tmp_path)
    if name.startswith("tv:"):
        wrap = lambda m: IntermediateLayerGetter(m, RETURN)  # noqa: E731
        extract = lambda m: create_feature_extractor(m, RETURN)  # noqa: E731
    else:
        wrap = lambda m: FeatureListNet(m, out_indices=(2, 4))  # noqa: E731
        extract = None
    model = _prepare(tscnet.attach_steps(copy.deepcopy(vanilla), spec))
    wrapper = tscnet.attach_steps(wrap(copy.deepcopy(vanilla)), spec)  # attached after wrapping
    wrapper.load_state_dict(wrap(model).state_dict(), strict=True)
    stock = wrap(copy.deepcopy(vanilla))
    stock.load_state_dict(tscnet.fold_steps(wrapper).state_dict(), strict=True)
    runs = [wrapper, copy.deepcopy(wrapper), stock] + ([extract(model)] if extract else [])
    with torch.no_grad():
        want = wrap(model).eval()(x)
        for run in runs:
            got = run.eval()(x)
            pairs = zip(got.values(), want.values()) if isinstance(want, dict) else zip(got, want)
            for a, b in pairs:
                assert rel_err(a, b) < 1e-5
    for run in [wrapper] + ([runs[-1]] if extract else []):
        _features_loss(run.train()(x)).backward()
        _policy_parameters_train(run, tscnet.get_policy(run))
