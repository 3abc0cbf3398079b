"""Stability bound vs measured amplification, and gradient flow, on small ResNets and real images."""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tscnet
from tscnet.analysis.gradflow import fixed_step_study, gradient_flow
from tscnet.analysis.lipschitz import block_ops, stability_bound
from tscnet.analysis.perturbation import amplification, residual_io
from tscnet.analysis.resteps import with_steps
from tscnet.analysis.spectral import bn_scale, conv_matrix
from tscnet.models.cifar_resnet import cifar_resnet

from conftest import sample_batch, sample_images
from stepping_utils import randomize_bn, randomize_steps

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


pytestmark = pytest.mark.usefixtures("one_thread")


@lru_cache(maxsize=None)
def fmnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 real Fashion-MNIST sample images (normalised as in training) and their labels."""
    _, labels = sample_images("fashionMNIST")
    return (sample_batch("fashionMNIST") - FMNIST_MEAN) / FMNIST_STD, torch.from_numpy(labels)


def fmnist_small(n: int) -> torch.Tensor:
    """``n`` of them at 14x14 (2x2 average pooling): 4x less work for the bound and the Jacobian."""
    return F.avg_pool2d(fmnist()[0][:n], 2)


def make(depth: int, policy: str, preact: bool = False, block: str = "basic", random_steps: bool = True) -> nn.Module:
    """A small CIFAR ResNet for 1-channel inputs with non-trivial BN statistics and steps."""
    torch.manual_seed(depth)
    model = tscnet.attach_steps(cifar_resnet(depth, block=block, preact=preact, in_chans=1), policy)
    randomize_bn(model, seed=depth)
    if random_steps and policy.split(":")[0] not in ("none", "fixed"):
        randomize_steps(model, seed=depth)
    return model.eval()


def plain(layer: nn.Module) -> nn.Module:
    return layer.unwrap() if hasattr(layer, "unwrap") else layer


def dense_norm(segment, shape) -> float:
    """‖segment‖₂ from the SVD of its dense matrix (BN alone: max |scale|)."""
    if segment.conv is None:
        return float(bn_scale(segment.norm).detach().abs().max())
    # The plain layers: a step site's forward would multiply Δt in, which L_j must not contain.
    layers = [plain(segment.conv)] + ([plain(segment.norm)] if segment.norm is not None else [])
    return torch.linalg.matrix_norm(conv_matrix(nn.Sequential(*layers), shape), ord=2).item()


@pytest.mark.parametrize("depth,block,preact,size", [pytest.param(8, "basic", False, 8, marks=pytest.mark.slow),
                                                      (11, "bottleneck", False, 4), (11, "bottleneck", True, 4)])
def test_block_lipschitz_is_the_product_of_dense_segment_norms(depth, block, preact, size):
    model = make(depth, "channel", preact=preact, block=block)
    bound = stability_bound(model, (1, size, size))
    shapes = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: shapes.__setitem__(m, tuple(a[0].shape[1:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    model(torch.zeros(1, 1, size, size))
    for h in hooks:
        h.remove()
    kinds = []
    for row, branch in zip(bound.blocks, tscnet.stepping.branches_of(model)):
        ops = block_ops(branch.block)
        dense = [dense_norm(s, shapes.get(s.conv)) for s in ops.branch]
        assert row.segment_norms == pytest.approx(dense, rel=2e-3)
        assert row.lipschitz == pytest.approx(math.prod(dense), rel=5e-3)
        assert row.shortcut_norm == pytest.approx(math.prod(dense_norm(s, shapes.get(s.conv)) for s in ops.shortcut),
                                                  rel=2e-3)
        kinds.append(row.shortcut_kind)
    assert kinds.count("projection") == (3 if block == "bottleneck" else 0)  # every stage's first block
    assert "subsample-pad" in kinds or block == "bottleneck"


def test_factor_is_shortcut_norm_plus_lipschitz_times_max_step():
    model = make(14, "channel")
    bound = stability_bound(model, (1, 28, 28), method="fft")
    steps = tscnet.step_sizes(model)
    for row, dt in zip(bound.blocks, steps):
        assert row.dt_max == pytest.approx(float(dt.max())) and row.dt_max != pytest.approx(float(dt.mean()), rel=1e-2)
        assert row.factor == pytest.approx(row.shortcut_norm + row.lipschitz * row.dt_max)
    assert bound.log10_bound == pytest.approx(sum(math.log10(r.factor) for r in bound.blocks))
    assert bound.evolution_time == pytest.approx(tscnet.evolution_time(model))
    assert bound.depth == 14 and len(bound.blocks) == 6
    assert [r.shortcut_kind for r in bound.blocks] == ["identity"] * 2 + ["subsample-pad", "identity"] * 2


CASES = {  # name: (depth, policy, preact, block, norm method)
    "resnet8_fixed2": (8, "fixed:2", False, "basic", "power"),
    "resnet14_tsc_random": (14, "tsc", False, "basic", "fft"),
    "preact8_channel_random": (8, "channel", True, "basic", "fft"),
    "bottleneck11_fixed0.5": (11, "fixed:0.5", False, "bottleneck", "fft"),
    "preact_bottleneck11_scalar": (11, "scalar", True, "bottleneck", "fft"),
    "resnet20_vanilla": (20, "none", False, "basic", "fft"),
}


@pytest.mark.parametrize("name", [n if n in ("resnet14_tsc_random", "preact8_channel_random")
                                  else pytest.param(n, marks=pytest.mark.slow) for n in CASES])
def test_measured_amplification_never_exceeds_the_bound(name):
    depth, policy, preact, block, method = CASES[name]
    model = make(depth, policy, preact=preact, block=block)
    x = fmnist_small(3)
    bound = stability_bound(model, (1, 14, 14), method=method)
    amp = amplification(model, x, directions=3, power_iters=8)
    assert torch.all(amp.worst <= bound.bound) and torch.all(amp.jacobian_norm <= bound.bound)
    # The worst direction beats every random one, linearised and measured with ε alike.
    assert torch.all(amp.jacobian_norm >= amp.random_max) and torch.all(amp.worst >= amp.random_max)
    if method == "power":  # the FFT bound is a certified upper bound of every power-iteration norm
        fft = stability_bound(model, (1, 14, 14), method="fft")
        assert all(f.lipschitz >= p.lipschitz * (1 - 1e-3) for f, p in zip(fft.blocks, bound.blocks))


def test_dead_network_amplifies_nothing_and_is_not_nan():
    """A collapsed network (every ReLU after the last block off, as in diverged deep runs):
    the map y_0 → y_D is constant, so every amplification is exactly 0, not 0/0."""
    model = make(8, "none")
    last = model.layer3[-1]
    x = fmnist_small(3)
    with torch.no_grad():
        last.bn2.bias.fill_(-1e4)  # relu(y + F(y)) = 0 everywhere
    amp = amplification(model, x, directions=2, power_iters=4)
    for values in (amp.random_mean, amp.random_max, amp.worst, amp.jacobian_norm):
        assert not torch.isnan(values).any() and torch.all(values == 0)
    assert torch.all(amplification(make(8, "none"), x, directions=2, power_iters=4).worst > 0)  # alive


def test_bound_is_tight_when_steps_vanish():
    # Δt = 0: each post-activation block is relu(S y) with S the identity or option A, so the
    # bound is exactly 1, and a perturbation of the positive features passes through unchanged
    # (‖J‖ = 1; a finite ε loses a little where it pushes small features below 0).
    x = fmnist_small(4)
    model = make(8, "scalar:0", random_steps=False)
    bound = stability_bound(model, (1, 14, 14), method="fft")  # L_j · 0: the conv norms do not enter
    amp = amplification(model, x, directions=2, power_iters=10)
    assert bound.bound == 1.0
    torch.testing.assert_close(amp.jacobian_norm, torch.ones(4, dtype=torch.float64), rtol=1e-4, atol=0)
    assert torch.all(amp.worst <= 1 + 1e-9) and amp.worst.max() > 0.999
    # Pre-activation shortcuts of option A read relu(bn1(y)): ‖S‖ = max|s| of bn1, above 1 here.
    pre = make(8, "scalar:0", preact=True, random_steps=False)
    pre_bound = stability_bound(pre, (1, 14, 14), method="fft")
    assert pre_bound.bound > 1.0
    assert torch.all(amplification(pre, x, directions=2, power_iters=10).worst <= pre_bound.bound)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tv:resnet18", "resnet18"])
def test_torchvision_and_timm_resnets(name):
    torch.manual_seed(0)
    model = tscnet.create_model(name, num_classes=10, steps="channel")
    randomize_bn(model)
    randomize_steps(model)
    model.eval()
    # Real CIFAR-10 images at 16x16: the stages run at 4x4 ... 1x1, cheap for power iteration.
    x = (sample_batch("cifar10", size=16)[:2] - 0.45) / 0.25
    bound = stability_bound(model, (3, 16, 16))
    assert [r.shortcut_kind for r in bound.blocks].count("projection") == 3 and bound.depth == 18
    amp = amplification(model, x, directions=2, power_iters=8)
    assert torch.all(amp.worst <= bound.bound) and torch.all(amp.worst >= amp.random_max)


def test_gated_blocks_are_refused():
    model = tscnet.create_model("seresnet18", num_classes=10, steps="none")
    with pytest.raises(ValueError, match="gate"):
        stability_bound(model, (3, 32, 32), method="fft")


@pytest.mark.parametrize("preact", [False, True])
def test_residual_io_is_stem_output_and_last_stage_output(preact):
    model = make(8, "tsc", preact=preact)
    x, _ = fmnist()
    y0, yd = residual_io(model, x)
    with torch.no_grad():
        stem = model.conv1(x) if preact else F.relu(model.bn1(model.conv1(x)))
        torch.testing.assert_close(y0, stem)
        # Before pooling, and before a pre-activation net's final BN-ReLU.
        last = F.relu(model.bn_final(yd)) if preact else yd
        torch.testing.assert_close(last, model.forward_features(x))


def test_with_steps_keeps_weights_and_replaces_steps():
    model = make(8, "tsc")
    x, _ = fmnist()
    with torch.no_grad():
        frozen = with_steps(model, tscnet.step_sizes(model))
        torch.testing.assert_close(frozen(x), model(x))
        vanilla = tscnet.fold_steps(with_steps(model, "fixed:1"))
        plain = with_steps(model, "fixed:0.1")
        assert tscnet.evolution_time(plain) == pytest.approx(0.1 * 3)
        assert not torch.allclose(plain(x), vanilla(x))
    assert tscnet.get_policy(model).spec == "tsc"  # the original is untouched


def test_small_steps_starve_early_blocks():
    torch.manual_seed(0)
    model = cifar_resnet(20, in_chans=1)
    x, y = fmnist()
    running = model.layer1[0].bn1.running_mean.clone()
    flows = fixed_step_study(model, x, y, values=(0.1, 1.0))
    small, unit = flows["Δt = 0.1"], flows["Δt = 1"]
    # Δt → 0: the gradient reaching block 0 is the output gradient passed through (flat profile);
    # with Δt = 1 every block adds to it on the way back.
    flat, grown = (f.input_grad[0] / f.input_grad[-1] for f in (small, unit))
    assert 0.5 < flat < 2.0 and grown > 3 * flat
    # Weight gradients of the early blocks scale with Δt: far smaller at Δt = 0.1.
    assert small.weight_grad[0] < unit.weight_grad[0] / 5
    assert torch.equal(model.layer1[0].bn1.running_mean, running)  # BN statistics restored


def test_gradient_flow_matches_a_hook_on_the_first_block():
    model = make(8, "tsc")
    x, y = fmnist()
    flow = gradient_flow(model, x, y, train_mode=False)
    seen = {}
    handle = model.layer1[0].register_forward_pre_hook(lambda m, a: seen.setdefault("y0", a[0].retain_grad() or a[0]))
    F.cross_entropy(model(x), y).backward()
    handle.remove()
    assert flow.input_grad[0] == pytest.approx(float(seen["y0"].grad.norm()), rel=1e-5)
    conv_grad = model.layer1[0].conv1.weight.grad.norm()
    assert flow.weight_grad[0] >= float(conv_grad) > 0
