"""Step sites: where Δt_d enters a residual branch ``y + Δt_d ⊙ F(y)`` during training.

Each site replaces one module of the branch *in place* and keeps its parameter names, so the
state dict of the stepped model is the vanilla one plus ``step_policy.*``:

* :class:`StepBatchNorm2d` — the branch's last BN with affine ``(γ·Δt, β·Δt)``:
  ``Δt ⊙ BN(x) = BN_{γΔt, βΔt}(x)``. C-sized work instead of an N·C·H·W multiply.
* :class:`StepConv2d` — the last conv of a pre-activation branch with weight ``W·Δt`` per output
  channel: ``Δt ⊙ (W * x + b) = (ΔtW) * x + Δt b``.
* :class:`StepScale` — an explicit ``x·Δt`` (timm's ``drop_path`` slot, which runs after SE and
  right before the residual add), for branches whose last BN feeds a gate.

Sites hold no parameters: Δt comes from the model's step policy, which computes every block's
step once per forward pass (:meth:`tscnet.stepping.policies.StepPolicy.step`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class StepSite:
    """Mixin: a module that reads Δt of block ``step_index`` from its policy."""

    step_index: int

    def bind(self, policy: nn.Module, index: int) -> None:
        # Kept out of ``_modules`` on purpose: the policy is registered once, on the root model.
        self.__dict__["_step_policy"] = policy
        self.step_index = index

    def dt(self) -> torch.Tensor:
        return self.__dict__["_step_policy"].step(self.step_index)


def _retype(module: nn.Module, cls: type) -> nn.Module:
    """A module of class ``cls`` sharing ``module``'s parameters, buffers, children and settings."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_step_policy", "step_index")})
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(module.__dict__[key])
    return new


class StepBatchNorm2d(nn.BatchNorm2d, StepSite):
    """BatchNorm2d whose output is scaled channel-wise by Δt through its affine parameters."""

    @classmethod
    def wrap(cls, bn: nn.BatchNorm2d) -> "StepBatchNorm2d":
        if type(bn) is not nn.BatchNorm2d or not bn.affine:
            raise TypeError(f"expected an affine nn.BatchNorm2d, got {type(bn).__name__}")
        return _retype(bn, cls)

    def unwrap(self) -> nn.BatchNorm2d:
        return _retype(self, nn.BatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d.forward with (γ·Δt, β·Δt) as the affine parameters.
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        dt = self.dt()
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight * dt,
            self.bias * dt,
            use_batch_stats,
            momentum,
            self.eps,
        )


class StepConv2d(nn.Conv2d, StepSite):
    """Conv2d whose output channels are scaled by Δt through its weight (and bias)."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d) -> "StepConv2d":
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        return _retype(conv, cls)

    def unwrap(self) -> nn.Conv2d:
        return _retype(self, nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.dt()
        bias = None if self.bias is None else self.bias * dt
        return self._conv_forward(x, self.weight * dt.view(-1, 1, 1, 1), bias)


class StepScale(nn.Module, StepSite):
    """``x ↦ Δt ⊙ drop_path(x)``: an explicit channel-wise scale in an empty slot of the block.

    ``drop_path`` is the module the slot held before (timm's DropPath, or ``None``).
    """

    def __init__(self, drop_path: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.drop_path = drop_path

    @classmethod
    def wrap(cls, module: Optional[nn.Module]) -> "StepScale":
        return cls(module)

    def unwrap(self) -> Optional[nn.Module]:
        return self.drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_path is not None:
            x = self.drop_path(x)
        return x * self.dt().view(1, -1, 1, 1).to(x.dtype)


SITES: dict[str, type] = {"norm": StepBatchNorm2d, "conv": StepConv2d, "slot": StepScale}
