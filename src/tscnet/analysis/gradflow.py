"""Gradient flow through the blocks: how the step size starves or feeds early blocks (docs/design.md, section 2).

With ``y_{i+1} = y_i + Δt_i ⊙ F(y_i, w_i)`` and a loss ``L`` of ``y_D``, back-propagation gives

    ∂L/∂y_n = ∂L/∂y_{n+1} · (I + Δt_n ⊙ ∂F/∂y_n),     ∂L/∂w_n = ∂L/∂y_{n+1} · Δt_n ⊙ ∂F/∂w_n.

As Δt → 0 the first product tends to the identity, so ``∂L/∂y_n`` carries nothing that block n or
later blocks computed, and every weight gradient is scaled by Δt: early blocks learn slowly.
:func:`gradient_flow` measures, for every block n on one real batch (cross-entropy, mean over the
batch), the norms ``‖∂L/∂y_n‖`` of the gradient at the block's input and ``‖∂L/∂w_n‖`` of the
gradient of its branch's weights. :func:`fixed_step_study` repeats it for fixed Δt on copies of a
model; :func:`tscnet.analysis.plots.plot_gradient_flow` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..stepping import branches_of
from .resteps import with_steps

__all__ = ["GradientFlow", "gradient_flow", "fixed_step_study", "FIXED_STEPS"]

FIXED_STEPS = (0.1, 0.5, 1.0, 2.0)


@dataclass
class GradientFlow:
    """Per-block gradient norms on one batch (index = block n, input side first)."""

    input_grad: list[float]  # ‖∂L/∂y_n‖ (Frobenius over the batch) at the input of block n
    weight_grad: list[float]  # ‖∂L/∂w_n‖ over the weights of block n (its convs and BNs)
    loss: float

    def to_dict(self) -> dict:
        return {"input_grad": self.input_grad, "weight_grad": self.weight_grad, "loss": self.loss}


def gradient_flow(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, train_mode: bool = True
) -> GradientFlow:
    """``‖∂L/∂y_n‖`` and ``‖∂L/∂w_n‖`` for every residual block n of ``model``.

    ``train_mode`` runs BN on batch statistics, as during training (the model's mode and its BN
    running statistics are restored afterwards). Step-policy parameters are not block weights.
    """
    blocks = [b.block for b in branches_of(model)]
    inputs: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:  # None: the input is passed on unchanged
        inputs.append(args[0])

    # BN running stats would move in train mode: save and restore them.
    state = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = model.training
    hooks = [b.register_forward_pre_hook(record) for b in blocks]
    try:
        model.train(train_mode)
        loss = F.cross_entropy(model(images), labels)
        weights = [[p for p in b.parameters() if p.requires_grad] for b in blocks]
        grads = torch.autograd.grad(loss, inputs + [p for ws in weights for p in ws], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        model.load_state_dict(state, strict=False)
    input_grad = [float(g.norm()) for g in grads[: len(blocks)]]
    flat = iter(grads[len(blocks) :])
    weight_grad = [float(torch.stack([next(flat).norm() for _ in ws]).norm()) for ws in weights]
    return GradientFlow(input_grad, weight_grad, loss.item())


def fixed_step_study(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    values: Sequence[float] = FIXED_STEPS,
    train_mode: bool = True,
) -> dict[str, GradientFlow]:
    """``{"Δt = V": gradient_flow(...)}`` for copies of ``model`` with ``fixed:V`` steps, same weights."""
    return {f"Δt = {v:g}": gradient_flow(with_steps(model, f"fixed:{v}"), images, labels, train_mode) for v in values}
