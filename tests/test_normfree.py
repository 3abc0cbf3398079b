"""Norm-free CIFAR ResNets, Fixup, zero-γ and the norm-aware controller input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tscnet
from tscnet.models.cifar_resnet import cifar_resnet
from tscnet.models.fixup import FixupBasicBlock, FixupBottleneck
from tscnet.train.optim import build_optimizer

from conftest import sample_batch, sample_images
from stepping_utils import randomize_steps

NETS = {"basic20": dict(depth=20), "preact20": dict(depth=20, preact=True),
        "bottleneck29": dict(depth=29, block="bottleneck"), "preact_bottleneck29": dict(depth=29, block="bottleneck", preact=True)}
POLICIES = ["fixed:0.3", "depth:0.5", "scalar:0.5", "channel", "layerscale", "mlp", "tsc", "tsc:feedback=explicit",
            "tsc:summary=l2_sn,dt_init=depth:0.5"]
SGD = dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)


def _norm_free(net: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return cifar_resnet(**NETS[net], norm="none", **kw)


@pytest.mark.parametrize("net", list(NETS))
def test_norm_free_net_has_no_normalisation(net):
    model, bn = _norm_free(net), cifar_resnet(**NETS[net])
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    bn_params = sum(p.numel() for m in bn.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in bn.parameters()) - bn_params
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("net", ["basic20"] + [pytest.param(n, marks=pytest.mark.slow) for n in NETS if n != "basic20"])
def test_every_policy_folds_bitwise_into_the_norm_free_net(net, policy, one_thread):
    model = tscnet.attach_steps(_norm_free(net), policy)
    if not policy.startswith(("fixed", "depth")):
        randomize_steps(model)
    model.eval()
    steps = tscnet.step_sizes(model)
    assert not torch.allclose(torch.cat(steps), torch.ones(sum(s.numel() for s in steps)))
    x = sample_batch("cifar10")[:4]
    folded = tscnet.fold_steps(model)
    vanilla = _norm_free(net)
    vanilla.load_state_dict(folded.state_dict(), strict=True)
    # The step sits on the branch's last conv (no BN to carry it): W[c] ← Δt_c · W[c], bit for bit.
    for branch, dt in zip(tscnet.stepping.branches_of(model), steps):
        want = branch.last_layer.weight * dt.view(-1, 1, 1, 1)
        got = vanilla.get_submodule(_name_of(model, branch.block)).get_submodule(branch.last_attr).weight
        assert torch.equal(got, want)
    with torch.no_grad():
        assert torch.equal(vanilla.eval()(x), model(x))


def _name_of(model: nn.Module, block: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is block)


@pytest.mark.parametrize("block, cls", [("basic", FixupBasicBlock), ("bottleneck", FixupBottleneck)])
def test_fixup_initialisation(block, cls):
    torch.manual_seed(0)
    model = cifar_resnet(56, block=block, norm="none", init="fixup")
    blocks = [m for m in model.modules() if isinstance(m, cls)]
    L, m = len(blocks), cls.convs
    for b in blocks:
        *scaled, last = b.branch_convs()
        assert not last.weight.any()  # every branch starts at F = 0
        assert float(b.scale.detach()) == 1.0
        assert not any(p.any() for n, p in b.named_parameters() if n.startswith("bias"))
    # He std sqrt(2 / fan_out) times L^(-1/(2m-2)), checked on the first stage's first convs together.
    first = torch.cat([b.conv1.weight.flatten() for b in model.layer1]).detach()
    fan_out = model.layer1[0].conv1.weight.shape[0] * math.prod(model.layer1[0].conv1.weight.shape[2:])
    want = math.sqrt(2 / fan_out) * L ** (-1 / (2 * m - 2))
    assert abs(float(first.std()) / want - 1) < 0.05
    assert not model.fc.weight.any() and not model.fc.bias.any()
    x = sample_batch("cifar10")[:4]
    assert not model(x).any()  # a zero classifier: every logit 0 at the start


def test_fixup_scalars_train_at_a_tenth_of_the_lr():
    model = cifar_resnet(20, norm="none", init="fixup")
    scalars = set(model.param_lr_scale())
    assert scalars == {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1].startswith(("bias", "scale"))
                       or n in ("stem_bias", "head_bias")}
    assert "fc.bias" in scalars and "fc.weight" not in scalars and len(scalars) == 9 * 5 + 3
    optimizer = build_optimizer(model, SGD)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(0.01 if name in scalars else 0.1), name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert optimizer.param_groups[0]["lr"] == 0.1  # the base group first: the lr a run logs is optim.lr


@pytest.mark.slow  # trains
def test_fixup_trains_on_real_images_and_refuses_steps(one_thread):
    torch.manual_seed(0)
    model = cifar_resnet(20, norm="none", init="fixup", in_chans=3, num_classes=10)
    images = sample_batch("cifar10")
    labels = torch.from_numpy(sample_images("cifar10")[1])
    optimizer = build_optimizer(model, SGD)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(math.log(10), abs=1e-5)  # zero classifier: uniform prediction
    assert losses[-1] < losses[0] - 0.1
    assert model.layer1[0].conv2.weight.any()  # the zero last convs have started to learn
    with pytest.raises(TypeError, match="Fixup"):
        tscnet.attach_steps(model, "tsc")
    assert tscnet.evolution_time(model) == 9.0  # Δt ≡ 1: the multiplier is part of F


@pytest.mark.parametrize("bad", [dict(init="fixup"), dict(init="fixup", norm="none", preact=True),
                                 dict(norm="layer"), dict(init="orthogonal")])
def test_bad_norm_or_init_is_refused(bad):
    with pytest.raises(ValueError, match="norm|init"):
        cifar_resnet(20, **bad)


@pytest.mark.parametrize("net", ["basic20", "bottleneck29", "preact20"])
def test_zero_last_zeroes_the_end_of_every_branch(net):
    for norm in ("batch", "none"):
        model = cifar_resnet(**NETS[net], norm=norm, init="zero_last")
        for branch in tscnet.stepping.find_branches(model):
            end = branch.norm if branch.norm is not None else branch.last_layer
            assert not end.weight.any(), (net, norm)
        x = sample_batch("cifar10")[:2]
        plain = cifar_resnet(**NETS[net], norm=norm)
        assert plain(x).std() > 0 and model(x).std() > 0


def test_zero_last_reaches_timm_and_torchvision():
    for name, attr in (("resnet18", "bn2"), ("tv:resnet18", "bn2")):
        zero = tscnet.create_model(name, steps="tsc", init="zero_last")
        one = tscnet.create_model(name, steps="none", init="he")
        assert not getattr(zero.layer1[0], attr).weight.any() and getattr(one.layer1[0], attr).weight.all()
    with pytest.raises(ValueError, match="only for tscnet's CIFAR"):
        tscnet.create_model("resnet18", norm="none")


def test_power_iteration_finds_each_branchs_spectral_norm(one_thread):
    model = tscnet.attach_steps(_norm_free("basic20"), "tsc:summary=l2_sn")
    spectral = tscnet.get_policy(model).spectral
    with torch.no_grad():
        first = spectral()
        for _ in range(200):  # one iteration per training forward, warm-started
            spectral()
    true = torch.tensor([sum(math.log(float(torch.linalg.matrix_norm(w.detach().flatten(1), ord=2)))
                             for w in b.weights()) for b in tscnet.stepping.branches_of(model)])
    with torch.no_grad():
        assert not torch.allclose(first, true, atol=0.02)  # one step from a random start is not enough
        assert torch.allclose(spectral(), true, atol=1e-3)
    spectral.eval()  # eval mode reads the estimate without moving it
    before = [b.clone() for b in spectral.buffers()]
    spectral()
    assert all(torch.equal(a, b) for a, b in zip(before, spectral.buffers()))


def test_norm_aware_controller_trains_its_input_and_starts_small(one_thread):
    for depth, blocks in ((20, 9), (56, 27)):
        model = tscnet.attach_steps(cifar_resnet(depth, norm="none", in_chans=3), "tsc:summary=l2_sn,dt_init=depth:0.5")
        steps = torch.cat(tscnet.step_sizes(model))
        assert torch.allclose(steps, torch.full_like(steps, blocks ** -0.5))
    policy = tscnet.get_policy(model)
    loss = F.cross_entropy(model(sample_batch("cifar10")[:4]), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert policy.spectral_in.grad is not None and model.layer1[0].conv1.weight.grad is not None
    sd = model.state_dict()
    assert [k for k in sd if ".spectral." in k] == [k for k in sd if k.endswith(".spectral.u")] != []  # the warm start is saved


def test_norm_aware_input_costs_a_constant_plus_one_op_per_conv(one_thread):
    from tscnet.analysis.opcount import count_train_step

    x, y = sample_batch("cifar10")[:2], torch.tensor([0, 1])
    extra = {}
    for depth in (20, 56):
        counts = {}
        for policy in ("tsc", "tsc:summary=l2_sn"):
            torch.manual_seed(0)
            model = tscnet.attach_steps(cifar_resnet(depth, norm="none"), policy)
            counts[policy] = count_train_step(model, x, y)["ops"]
        extra[depth] = counts["tsc:summary=l2_sn"] - counts["tsc"]
    convs = {20: 18, 56: 54}
    # Every conv weight gets one more gradient, summed into the conv's own; the rest is per conv shape.
    assert extra[56] - extra[20] == convs[56] - convs[20], extra
    assert extra[20] - convs[20] <= 100, extra


@pytest.mark.parametrize("net", ["basic20", "preact20"])
def test_stability_bound_covers_norm_free_nets(net, one_thread):
    from tscnet.analysis.lipschitz import stability_bound

    bounds = {}
    for policy in ("fixed:1", "depth:0.5"):
        model = tscnet.attach_steps(_norm_free(net), policy)
        bounds[policy] = stability_bound(model, (3, 16, 16), method="fft")
    # Same weights, smaller steps: every factor ‖S_j‖ + L_j Δt_j shrinks, and so does the product.
    assert all(0 < b.lipschitz < math.inf for b in bounds["fixed:1"].blocks)
    assert bounds["depth:0.5"].log10_bound < bounds["fixed:1"].log10_bound
    assert [b.lipschitz for b in bounds["depth:0.5"].blocks] == [b.lipschitz for b in bounds["fixed:1"].blocks]


@pytest.mark.slow  # torch.compile
@pytest.mark.parametrize("policy", ["tsc:summary=l2_sn", "tsc:summary=l2_sn,feedback=explicit"])
def test_norm_aware_controller_compiles_like_eager(policy, one_thread):
    from stepping_utils import assert_compiles_like_eager

    torch.manual_seed(0)
    eager = tscnet.attach_steps(cifar_resnet(8, norm="none", in_chans=1), policy)
    x, y = sample_batch("fashionMNIST")[:8], torch.arange(8) % 10
    assert_compiles_like_eager(eager, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), x, y)
