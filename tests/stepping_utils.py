"""Helpers that give a model non-trivial steps and BN statistics, so fold tests can fail."""
from __future__ import annotations

import torch
from torch import nn

import tscnet


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)


@torch.no_grad()
def randomize_steps(model: nn.Module, seed: int = 0) -> None:
    """Steps away from 1 and varying across channels (the fixed policy keeps its constant)."""
    policy = tscnet.get_policy(model)
    g = torch.Generator().manual_seed(seed)
    for name, p in policy.named_parameters():
        if name == "dt":
            p.copy_(torch.rand(p.shape, generator=g) * 1.6 + 0.2)
        elif name.startswith("out."):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def write_random_profile(model: nn.Module, path, seed: int = 0):
    """A ``steps.json`` of random steps in [0.2, 1.8] for every block and channel of ``model``; returns ``path``."""
    import json

    from tscnet.stepping import find_branches
    from tscnet.stepping.profile import profile_dict

    g = torch.Generator().manual_seed(seed)
    steps = [torch.rand(b.channels, generator=g) * 1.6 + 0.2 for b in find_branches(model)]
    path.write_text(json.dumps(profile_dict(steps, type(model).__name__, "profile")))
    return path


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def assert_compiles_like_eager(eager: nn.Module, make_optimizer, x: torch.Tensor, y: torch.Tensor,
                               steps: int = 5) -> None:
    """Train ``eager`` and a compiled copy side by side: equal losses and weights, no recompile after
    the warm-up (train-mode graph and its backward), no graph break."""
    import copy

    import torch.nn.functional as F

    torch._dynamo.reset()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="aot_eager")  # the graph capture, without code generation
    optimizers = [make_optimizer(m) for m in (eager, model)]
    try:
        for step in range(steps):
            if step == 2:  # after warm-up any recompile is an error
                torch._dynamo.config.error_on_recompile = True
            losses = []
            for run, opt in zip((eager, compiled), optimizers):
                loss = F.cross_entropy(run(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.config.error_on_recompile = False
    assert torch._dynamo.explain(copy.deepcopy(eager))(x).graph_break_count == 0
    for a, b in zip(eager.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
