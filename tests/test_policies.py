import copy

import pytest
import torch

import tscnet
from tscnet.stepping import parse_policy, replace_steps

from conftest import sample_batch
from stepping_utils import randomize_steps, rel_err


@pytest.mark.parametrize(
    "text, name, options",
    [("none", "none", {}), ("fixed:0.1", "fixed", {"value": 0.1}), ("scalar:0", "scalar", {"init": 0.0}),
     ("channel", "channel", {}), ("tsc:hidden=16,dt_max=3", "tsc", {"hidden": 16, "dt_max": 3.0}),
     ({"name": "mlp", "hidden": 8}, "mlp", {"hidden": 8})],
)
def test_parse_policy(text, name, options):
    spec = parse_policy(text)
    assert (spec.name, spec.options) == (name, options)
    assert parse_policy(str(spec)) == spec


@pytest.mark.parametrize("bad", ["fixed:abc", "tsc:7", "channel:1,2", "tsc:summary=l3"])
def test_malformed_policies_are_clear_errors(bad):
    with pytest.raises(ValueError):
        tscnet.create_model("cifar_resnet20", steps=bad)


@pytest.mark.parametrize(
    "name, policy",
    [(n, p) for n in ("cifar_resnet20", "cifar_preact_resnet20") for p in ("tsc", "mlp", "channel:1", "fixed:1")]
    + [pytest.param(*case, marks=pytest.mark.slow) for case in [("resnet18", "tsc"), ("tv:resnet18", "channel:1"),
                                                                  ("seresnet50", "tsc")]],
)
def test_unit_step_policies_start_as_the_vanilla_model(policy, name):
    torch.manual_seed(0)
    vanilla = tscnet.create_model(name, num_classes=10)
    stepped = tscnet.attach_steps(copy.deepcopy(vanilla), policy)
    x = sample_batch("cifar10")[:8]
    for mode in ("train", "eval"):
        vanilla.train(mode == "train"), stepped.train(mode == "train")
        torch.testing.assert_close(stepped(x), vanilla(x), rtol=1e-5, atol=1e-5)
    # Running statistics move identically through the stepped BN.
    stepped_state = stepped.state_dict()
    for k, a in vanilla.state_dict().items():
        torch.testing.assert_close(a, stepped_state[k], msg=k)


def test_state_dict_keeps_vanilla_names_plus_policy():
    vanilla = tscnet.create_model("cifar_resnet20")
    stepped = tscnet.create_model("cifar_resnet20", steps="tsc")
    extra = set(stepped.state_dict()) - set(vanilla.state_dict())
    assert set(vanilla.state_dict()) <= set(stepped.state_dict())
    # The policy lives in the first block's step site, under one prefix.
    assert tscnet.stepping.policy_name(stepped) == "layer1.0.bn2.step_policy"
    assert extra and all(k.startswith("layer1.0.bn2.step_policy.") for k in extra)
    assert not any(k.endswith(("gamma", "beta")) for k in stepped.state_dict())


POLICIES = ["fixed:0.5", "scalar:0.5", "channel", "mlp", "tsc", "tsc:feedback=explicit"]


def _count_policy_calls(model):
    calls = []
    tscnet.get_policy(model).register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preact_resnet20",  # norm, conv, slot sites
                                  pytest.param("seresnet18", marks=pytest.mark.slow)])
def test_policy_runs_once_per_forward(name, policy):
    model = tscnet.create_model(name, steps=policy)
    calls = _count_policy_calls(model)
    x = sample_batch("cifar10")[:2]
    model(x)
    assert len(calls) == 1
    model(x).sum().backward()
    assert len(calls) == 2
    with torch.no_grad():
        model.eval()(x)
    assert len(calls) == 3


@pytest.mark.parametrize("policy, earlier", [("tsc", True), ("tsc:feedback=explicit", True), ("mlp", False)])
def test_step_depends_on_own_and_earlier_weights_only(policy, earlier):
    # Δt_d = Θ(w_d; Δt_1..Δt_{d−1}): the recurrence carries earlier blocks' weights into Δt_d;
    # mlp sees block d alone; no policy may look at later blocks.
    model = tscnet.create_model("cifar_resnet20", steps=policy)
    randomize_steps(model)
    policy_module = tscnet.get_policy(model)
    convs = [b.last_layer.weight for b in policy_module.branches]
    for d in (1, 4, 7):
        grads = torch.autograd.grad(policy_module.compute()[d].sum(), convs, allow_unused=True)
        touched = [g is not None and bool(g.abs().sum() > 0) for g in grads]
        assert touched[d]
        assert any(touched[:d]) == earlier and all(touched[: d]) == earlier, (policy, d, touched)
        assert not any(touched[d + 1 :]), (policy, d, touched)


@pytest.mark.parametrize("policy", ["tsc", "tsc:feedback=explicit", "mlp"])
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet8"])  # resnet8: one block per stage
def test_controller_gradients_reach_controller_and_conv_weights(name, policy):
    # Every controller parameter gets a gradient: an unused one would stall DDP.
    model = tscnet.create_model(name, steps=policy, num_classes=10)
    randomize_steps(model)
    x = sample_batch("cifar10")
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(20) % 10)
    loss.backward()
    policy = tscnet.get_policy(model)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    # Through the summary ‖W_d[c]‖: the weight gradient differs from a detached-summary run.
    conv = policy.branches[1].last_layer
    g_joint = conv.weight.grad.clone()
    model.zero_grad()
    steps = policy.compute()
    steps[1].sum().backward()
    assert conv.weight.grad.abs().sum() > 0 and not torch.equal(conv.weight.grad, torch.zeros_like(g_joint))


@pytest.mark.parametrize("policy", ["tsc", "mlp", "tsc:dt_max=3,dt_min=0.1"])
def test_controller_steps_stay_in_bounds(policy):
    model = tscnet.create_model("cifar_resnet20", steps=policy)
    dt_min, dt_max = tscnet.get_policy(model).dt_min, tscnet.get_policy(model).dt_max
    with torch.no_grad():
        for p in tscnet.get_policy(model).out.parameters():
            p.normal_(0, 50.0)  # saturate the sigmoid both ways
    steps = torch.cat(tscnet.get_policy(model).compute())
    assert steps.min() >= dt_min > 0 and steps.max() <= dt_max
    assert steps.min() < 1.01 * dt_min and steps.max() > 0.99 * dt_max


@pytest.mark.parametrize("policy, start", [("tsc", 1.0), ("tsc:dt_init=0.5", 0.5), ("mlp:dt_init=0.2,dt_min=0.1", 0.2)])
def test_controllers_start_at_dt_init(policy, start):
    model = tscnet.create_model("cifar_resnet20", steps=policy)
    steps = torch.cat(tscnet.step_sizes(model))
    torch.testing.assert_close(steps, torch.full_like(steps, start))
    assert tscnet.evolution_time(model) == pytest.approx(9 * start, rel=1e-5)


@pytest.mark.parametrize("bad", ["tsc:dt_init=0.005", "tsc:dt_init=2", "mlp:dt_init=0.05,dt_min=0.1"])
def test_dt_init_outside_the_bounds_is_refused(bad):
    with pytest.raises(ValueError, match="dt_min < dt_init < dt_max"):
        tscnet.create_model("cifar_resnet20", steps=bad)


def test_step_sizes_and_evolution_time():
    model = tscnet.create_model("cifar_resnet20", steps="fixed:0.25")
    steps = tscnet.step_sizes(model)
    assert [s.numel() for s in steps] == [16] * 3 + [32] * 3 + [64] * 3
    assert tscnet.evolution_time(model) == pytest.approx(9 * 0.25)
    assert tscnet.evolution_time(tscnet.create_model("cifar_resnet20")) == 9.0


def test_scalar_policy_has_one_parameter_per_block():
    model = tscnet.create_model("cifar_resnet56", steps="scalar:0")
    assert tscnet.get_policy(model).dt.numel() == 27
    assert tscnet.evolution_time(model) == 0.0


def test_unsupported_block_type_is_named():
    class WeirdBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    with pytest.raises(TypeError, match="WeirdBlock"):
        tscnet.attach_steps(torch.nn.Sequential(WeirdBlock()), "tsc")


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preact_resnet20", pytest.param("tv:resnet18", marks=pytest.mark.slow)])
def test_replace_steps_keeps_weights_and_swaps_the_policy(name):
    torch.manual_seed(0)
    x = sample_batch("cifar10")[:4]
    vanilla = tscnet.create_model(name, num_classes=10).eval()
    for bn in (m for m in vanilla.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)  # no zero-initialised last BN: every branch counts
    model = tscnet.attach_steps(copy.deepcopy(vanilla), "tsc")
    with torch.no_grad():
        randomize_steps(model)  # Δt ≠ 1, so a stale binding would change the output
    prefix = tscnet.stepping.policy_name(model) + "."
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(prefix)}
    replace_steps(model, "fixed:0.5")
    assert str(tscnet.get_policy(model).spec) == "fixed:0.5"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    reference = tscnet.attach_steps(copy.deepcopy(vanilla), "fixed:0.5").eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) < 1e-5
        replace_steps(model, "none")  # the sites stay, at Δt ≡ 1: the vanilla function
        assert rel_err(model(x), vanilla(x)) < 1e-5
    fresh = replace_steps(copy.deepcopy(vanilla), "channel")  # no steps yet: attached
    assert [dt.shape for dt in tscnet.step_sizes(fresh)] == [dt.shape for dt in tscnet.step_sizes(model)]


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=pytest.mark.slow), "seresnet18",
                                  pytest.param("tv:resnet18", marks=pytest.mark.slow)])
@pytest.mark.parametrize("policy", ["tsc", pytest.param("channel", marks=pytest.mark.slow)])
def test_library_models_with_steps_start_with_live_branches(name, policy):
    # timm/torchvision zero-initialise the last BN's γ (zero_init_last) when asked; with steps that
    # would make every branch output 0 and dL/dΔt = 0 at the start: the policy could never learn.
    model = tscnet.create_model(name, num_classes=10, steps=policy)
    assert all(b.norm.weight.abs().min() > 0 for b in tscnet.stepping.branches_of(model))
    x = sample_batch("imagenet", size=32)[:2]
    torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    policy_module = tscnet.get_policy(model)
    trained = policy_module.out.weight if policy == "tsc" else policy_module.dt
    assert trained.grad is not None and trained.grad.abs().sum() > 0
