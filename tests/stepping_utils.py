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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
