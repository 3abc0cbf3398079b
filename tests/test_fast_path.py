"""The batched step machinery: same numbers as the plain per-block formulas, few ops, compilable."""
import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tscnet
from tscnet.analysis.opcount import count_train_step
from tscnet.models import cifar_resnet
from tscnet.stepping.lstm import BlockLSTM
from tscnet.stepping.multi_tensor import filter_norms, scale_by_steps
from tscnet.stepping.projections import HiddenToWidth, WidthToHidden
from tscnet.stepping.sites import StepScale

from conftest import sample_batch
from stepping_utils import assert_compiles_like_eager, randomize_bn, randomize_steps, rel_err

POLICIES = ["fixed:0.5", "scalar:0.5", "channel", "mlp", "tsc", "tsc:feedback=explicit"]


def _double(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def test_scale_by_steps_matches_per_block_products_and_gradients():
    dts = _double((4,), (4,), (8,))
    gammas, betas = _double((4,), (4,), (8,), seed=1), _double((4,), (4,), (8,), seed=2)
    out_g, out_b = scale_by_steps(dts, gammas, betas)
    loss = sum((o * torch.arange(o.numel())).sum() for o in out_g + out_b)
    fast = torch.autograd.grad(loss, dts + gammas + betas)
    ref_loss = sum(((g * d) * torch.arange(d.numel())).sum() + ((b * d) * torch.arange(d.numel())).sum()
                   for d, g, b in zip(dts, gammas, betas))
    ref = torch.autograd.grad(ref_loss, dts + gammas + betas)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)
    # conv filters: Δt broadcast over (C, 1, 1, 1), its gradient summed back
    dts4 = [d.detach().view(-1, 1, 1, 1).requires_grad_() for d in dts]
    weights = _double((4, 3, 3, 3), (4, 3, 3, 3), (8, 4, 1, 1), seed=3)
    assert torch.autograd.gradcheck(lambda *t: tuple(scale_by_steps(t[:3], t[3:])[0]), (*dts4, *weights))


def test_filter_norms_match_torch_norms_and_gradients():
    weights = _double((4, 3, 3, 3), (4, 3, 3, 3), (8, 4, 3, 3), (8, 8, 1, 1))
    with torch.no_grad():
        weights[1][2].zero_()  # an all-zero filter: gradient 0, not NaN
    norms = filter_norms(weights)
    torch.testing.assert_close(norms, torch.cat([w.flatten(1).norm(dim=1) for w in weights]))
    probe = torch.randn(norms.shape, dtype=torch.float64)
    fast = torch.autograd.grad((norms * probe).sum(), weights)
    ref = [w.detach() / w.detach().flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, 1, 1, 1) * p.view(-1, 1, 1, 1)
           for w, p in zip(weights, probe.split([w.shape[0] for w in weights]))]
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)
    assert torch.isfinite(fast[1]).all() and fast[1][2].abs().sum() == 0


def test_per_width_projections_equal_one_linear_per_width():
    sizes = [4, 4, 8, 8, 8, 2]
    to_hidden, to_width = WidthToHidden(sizes, 5).double(), HiddenToWidth(5, sizes).double()
    s = torch.randn(sum(sizes), dtype=torch.float64)
    x = to_hidden(s)
    offsets = {4: 0, 8: 4, 2: 12}
    for d, (c, part) in enumerate(zip(sizes, s.split(sizes))):
        torch.testing.assert_close(x[d], part @ to_hidden.weight[offsets[c] : offsets[c] + c])
    h = torch.randn(len(sizes), 5, dtype=torch.float64)
    z = to_width(h).split(sizes)
    for d, c in enumerate(sizes):
        cols = slice(offsets[c], offsets[c] + c)
        torch.testing.assert_close(z[d], h[d] @ to_width.weight[:, cols] + to_width.bias[cols])
        torch.testing.assert_close(to_width.block(h[d : d + 1], d), z[d])


@pytest.mark.slow
def test_block_lstm_is_nn_lstm_in_eager_and_compiled():
    torch.manual_seed(0)
    ours = BlockLSTM(6, 6)
    reference = torch.nn.LSTM(6, 6)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(9, 1, 6)
    state = (torch.randn(1, 1, 6), torch.randn(1, 1, 6))
    expected, (h, c) = reference(x, state)
    for run in (ours, torch.compile(ours, backend="eager", fullgraph=True)):
        out, (h2, c2) = run(x, state)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close((h2, c2), (h, c))


def _top_level_aten_ops(model, x, y) -> int:
    return count_train_step(model, x, y)["ops"]  # forward + cross-entropy + backward, after a warm-up step


@pytest.mark.slow
def test_op_count_of_a_training_step_does_not_grow_with_depth(one_thread):
    # Extra ops over the vanilla model: a constant, plus for weight-fed controllers one gradient
    # sum per block (the last conv's weight gets its gradient from the conv and from Δt).
    x, y = sample_batch("cifar10")[:2], torch.tensor([0, 1])
    extra = {}
    for depth in (20, 56):
        torch.manual_seed(0)
        base = _top_level_aten_ops(cifar_resnet(depth), x, y)
        for policy in ("fixed:0.5", "scalar:0", "channel", "mlp", "tsc"):
            extra[depth, policy] = _top_level_aten_ops(tscnet.attach_steps(cifar_resnet(depth), policy), x, y) - base
    blocks = Counter({20: 9, 56: 27})
    for policy in ("fixed:0.5", "scalar:0", "channel"):
        assert extra[56, policy] == extra[20, policy] <= 10, (policy, extra)
    for policy in ("mlp", "tsc"):
        assert extra[56, policy] - extra[20, policy] == blocks[56] - blocks[20], (policy, extra)
        assert extra[20, policy] - blocks[20] <= 70, (policy, extra)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["none"] + POLICIES)
def test_compiled_training_matches_eager_without_recompiles(policy, one_thread):
    torch.manual_seed(0)
    eager = tscnet.attach_steps(cifar_resnet(8, in_chans=1), policy)
    assert_compiles_like_eager(eager, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
                               sample_batch("fashionMNIST")[:16], torch.arange(16) % 10)


@pytest.mark.slow
def test_inductor_compiled_tsc_trains_like_eager(one_thread):
    torch._dynamo.reset()
    torch.manual_seed(0)
    # At Δt ≡ 1 (the start of training): random steps near the bounds make this small network so
    # ill-conditioned that the vanilla model with the same frozen Δt differs by ~2 % between
    # inductor and eager too.
    eager = tscnet.attach_steps(cifar_resnet(8, in_chans=1), "tsc")
    compiled = torch.compile(copy.deepcopy(eager))
    x, y = sample_batch("fashionMNIST")[:16], torch.arange(16) % 10
    for run in (eager, compiled):
        F.cross_entropy(run(x), y).backward()
    grads = [(p.grad, q.grad) for p, q in zip(eager.parameters(), compiled.parameters())]
    assert all(a is not None and b is not None for a, b in grads)
    assert tscnet.get_policy(eager).out.weight.grad.abs().sum() > 0
    for a, b in grads:
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)])
@pytest.mark.parametrize("policy", ["tsc", pytest.param("mlp", marks=pytest.mark.slow),
                                    pytest.param("channel", marks=pytest.mark.slow)])
def test_models_cast_to_half_precision_train_and_fold(policy, dtype):
    torch.manual_seed(0)
    for model in (tscnet.attach_steps(cifar_resnet(8), policy).to(dtype),    # cast after attaching
                  tscnet.attach_steps(cifar_resnet(8).to(dtype), policy)):  # attached to a cast model
        randomize_steps(model)
        x = sample_batch("cifar10")[:4].to(dtype)
        model(x).float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == dtype for p in tscnet.get_policy(model).parameters())
        folded = tscnet.fold_steps(model.eval())
        assert all(p.dtype == dtype for p in folded.parameters())
        with torch.no_grad():
            assert rel_err(folded(x).float(), model(x).float()) < 3e-2


def test_slot_site_under_autocast_rounds_the_product_not_the_step():
    site = StepScale()
    dt = torch.tensor([1.0 + 2**-9, 0.75 + 2**-10, 1.5]).view(1, -1, 1, 1)  # not bf16-representable
    site.bind(type("Policy", (nn.Module,), {"site_args": lambda self, i, x: dt})(), 0)
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = site(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (x.float() * dt).to(torch.bfloat16), rtol=0, atol=0)
    assert not torch.equal(out, x * dt.to(torch.bfloat16))


@pytest.mark.parametrize("name", ["cifar_resnet20", pytest.param("seresnet18", marks=pytest.mark.slow),
                                  "cifar_preact_resnet20"])
def test_sync_batchnorm_conversion_keeps_the_steps(name):
    model = tscnet.create_model(name, steps="tsc")
    randomize_bn(model)
    randomize_steps(model)
    x = sample_batch("cifar10")[:4]
    model.eval()
    with torch.no_grad():
        before = model(x)
    synced = tscnet.convert_sync_batchnorm(copy.deepcopy(model))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    with torch.no_grad():
        torch.testing.assert_close(synced.eval()(x), before)
        torch.testing.assert_close(tscnet.fold_steps(synced)(x), before, rtol=1e-4, atol=1e-5)
    # Training mode without a process group: the plain BN path, steps applied.
    synced.train()(x).sum().backward()
    assert tscnet.get_policy(synced).out.weight.grad is not None
    if name != "cifar_resnet20":
        return
    dropped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    with pytest.raises(RuntimeError, match="convert_sync_batchnorm"):
        tscnet.step_sizes(dropped)
