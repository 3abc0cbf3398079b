"""fold_steps: exact, total, and the result is the vanilla architecture."""
import copy
from functools import lru_cache

import pytest
import torch

import tscnet
from tscnet.models import cifar_resnet

from conftest import sample_batch
from stepping_utils import randomize_bn, randomize_steps, rel_err

POLICIES = ["fixed:0.5", "scalar:0.3", "channel", "mlp", "tsc"]
CIFAR = ["cifar_resnet20", "cifar_preact_resnet164", "cifar_resnet164"]
QUICK = {"cifar_resnet20", "resnet18"}  # pytest -m "not slow" folds these; the full suite every model
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "seresnet50",
            "tv:resnet50", "tv:resnext50_32x4d"]


def _tiered(names: list[str]) -> list:
    return [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in names]


@lru_cache(maxsize=None)
def _vanilla(name):
    torch.manual_seed(0)
    return tscnet.create_model(name, num_classes=10, steps="none")


def _stepped(name, policy):
    # Attach to a copy of one vanilla model per name: building timm models dominates the cost.
    model = tscnet.attach_steps(copy.deepcopy(_vanilla(name)), policy)
    randomize_bn(model)
    if not policy.startswith("fixed"):
        randomize_steps(model)
    return model.eval()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", _tiered(CIFAR + IMAGENET))
def test_fold_is_exact_on_real_images(name, policy):
    model = _stepped(name, policy)
    steps = torch.cat(tscnet.step_sizes(model))
    assert steps.std() > 0 or policy.startswith(("fixed", "scalar")), "steps must be non-trivial"
    assert not torch.allclose(steps, torch.ones_like(steps))
    x = sample_batch("cifar10")[:4] if name.startswith("cifar") else sample_batch("imagenet", size=32)[:4]
    folded = tscnet.fold_steps(model)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) < 1e-5


@pytest.mark.parametrize("name", _tiered(["cifar_resnet20", "cifar_preact_resnet164", "resnet50", "seresnet50"]))
def test_fold_is_exact_with_explicit_feedback(name):
    test_fold_is_exact_on_real_images(name, "tsc:feedback=explicit")


@pytest.mark.parametrize("name", _tiered(["cifar_resnet20", "cifar_preact_resnet164", "resnet50", "seresnet50",
                                          "tv:resnet50"]))
def test_folded_model_is_the_vanilla_architecture(name):
    model = _stepped(name, "tsc")
    folded = tscnet.fold_steps(model)
    vanilla = tscnet.create_model(name, num_classes=10, steps="none")
    assert list(folded.state_dict()) == list(vanilla.state_dict())
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in vanilla.parameters())
    assert tscnet.get_policy(folded) is None
    vanilla.load_state_dict(folded.state_dict(), strict=True)
    # Nothing of tscnet's stepping machinery is left; the module types are those of the vanilla model.
    assert {type(m) for m in folded.modules()} == {type(m) for m in vanilla.modules()}


@pytest.mark.slow
def test_folded_weights_load_into_unmodified_library_classes():
    import timm
    import torchvision

    folded = tscnet.fold_steps(_stepped("seresnet50", "channel"))
    timm.create_model("seresnet50", num_classes=10).load_state_dict(folded.state_dict(), strict=True)
    folded = tscnet.fold_steps(_stepped("tv:resnet50", "tsc"))
    torchvision.models.resnet50(num_classes=10).load_state_dict(folded.state_dict(), strict=True)


def test_fold_leaves_the_training_model_untouched():
    model = _stepped("cifar_resnet20", "tsc")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tscnet.fold_steps(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tscnet.get_policy(model) is not None


def test_fold_refuses_gates_that_mix_channels():
    model = _stepped("ecaresnet26t", "channel")
    with pytest.raises(ValueError, match="EcaModule"):
        tscnet.fold_steps(model)


@pytest.mark.slow
def test_folded_model_scripts_exports_and_compiles():
    # ResNet-8 keeps the inductor compile short; the blocks are the same as ResNet-20's.
    model = tscnet.attach_steps(cifar_resnet(8), "tsc")
    randomize_steps(model)
    folded = tscnet.fold_steps(model.eval())
    x = sample_batch("cifar10")[:4]
    with torch.no_grad():
        ref = folded(x)
        with pytest.warns(FutureWarning):  # TorchScript is deprecated in torch >= 2.10 but still works
            scripted = torch.jit.script(folded)
        torch.testing.assert_close(scripted(x), ref)
        exported = torch.export.export(folded, (x,))
        torch.testing.assert_close(exported.module()(x), ref)
        torch.testing.assert_close(torch.compile(folded)(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", _tiered(["cifar_resnet20", "cifar_preact_resnet164", "seresnet50", "tv:resnet50"]))
def test_unfold_inverts_fold_and_keeps_the_function(name, tmp_path):
    """model.safetensors + steps.json → the stepped model: same Δt, same outputs, same weights where Δt ≠ 0."""
    import json

    from tscnet.stepping.profile import profile_dict

    model = _stepped(name, "channel")
    gated = tscnet.get_policy(model).branches[0].se is not None
    with torch.no_grad():  # two channels of block 0 switched off: the folded model keeps no F_c there
        tscnet.get_policy(model).dt[:2] = 0.0 if not gated else 0.25
    steps = tscnet.step_sizes(model)
    (tmp_path / "steps.json").write_text(json.dumps(profile_dict(steps, name, "channel")))
    folded = tscnet.fold_steps(model)
    rebuilt = copy.deepcopy(_vanilla(name))
    rebuilt.load_state_dict(folded.state_dict())
    rebuilt = tscnet.unfold_steps(rebuilt, f"profile:{tmp_path}").eval()
    assert all(torch.equal(a, b) for a, b in zip(tscnet.step_sizes(rebuilt), steps))
    x = sample_batch("cifar10")[:4] if name.startswith("cifar") else sample_batch("imagenet", size=32)[:4]
    with torch.no_grad():
        assert rel_err(rebuilt(x), model(x)) < 1e-5
    refolded = tscnet.fold_steps(rebuilt).state_dict()
    assert all(torch.allclose(refolded[k], v, rtol=1e-5, atol=1e-7) for k, v in folded.state_dict().items())
    # Away from the switched-off channels the original weights come back (γ, β, W or SE columns).
    prefix = tscnet.stepping.policy_name(model) + "."
    original = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    unfolded = {k: v for k, v in rebuilt.state_dict().items() if not k.startswith(prefix)}
    assert original.keys() == unfolded.keys()
    changed_by_fold = [k for k, v in folded.state_dict().items() if not torch.equal(v, original[k])]
    assert changed_by_fold, "the steps must change some weights when folded"
    branch = tscnet.get_policy(rebuilt).branches[0]
    target = branch.norm if branch.norm is not None else branch.last_layer
    zeroed = {k for k, v in rebuilt.named_parameters() if v is target.weight or v is target.bias}
    for key in changed_by_fold:
        a, b = original[key], unfolded[key]
        if key in zeroed and not gated:  # channels 0 and 1 of block 0: zero in the folded and the unfolded model
            assert torch.equal(b[:2], torch.zeros_like(b[:2]))
            a, b = a[2:], b[2:]
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), key


def test_unfold_needs_steps_that_do_not_depend_on_the_weights():
    model = copy.deepcopy(_vanilla("cifar_resnet20"))
    unfolded = tscnet.unfold_steps(model, "fixed:0.5")
    assert all(torch.equal(dt, torch.full_like(dt, 0.5)) for dt in tscnet.step_sizes(unfolded))
    assert tscnet.unfold_steps(copy.deepcopy(_vanilla("cifar_resnet20")), "none") is not None


def test_fold_refuses_a_zero_step_through_a_gate():
    """SE reads BN_c(x) before the step: with Δt_c = 0 the folded block would feed it 0 instead."""
    model = _stepped("seresnet50", "channel")
    with torch.no_grad():
        tscnet.get_policy(model).dt[3] = 0.0
    with pytest.raises(ValueError, match=r"cannot fold Δt = 0 exactly through the gate .*SEModule.*channels \[3\]"):
        tscnet.fold_steps(model)
