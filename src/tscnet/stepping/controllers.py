"""Step controllers Θ: step sizes computed from the network's own weights (docs/design.md, sections 3–4).

``tsc`` (the paper's TSC_LSTM), default ``feedback=implicit``::

    s_d   = summary(w_d)                               per-output-channel weight summary, C_d values
    x_d   = In_{w(d)}(s_d)                             per-width input projection (no bias)
    h_d, c_d = LSTM(x_d, (h_{d−1}, c_{d−1}))           one LSTM run across the blocks, h_{−1} = c_{−1} = 0
    Δt_d  = Δt_min + (Δt_max − Δt_min) · sigmoid(Out_{w(d)}(h_d))    channel-wise, in [Δt_min, Δt_max]

The hidden state ``h_{d−1}`` determines every earlier step (``Δt_j`` is a function of ``h_j``), so
Δt_d depends on block d's weights and on all previous steps, as the poster describes. Every
stage is batched: the summaries of all blocks (:func:`~tscnet.stepping.multi_tensor.filter_norms`),
both projections (:mod:`~tscnet.stepping.projections`) and the recurrence (one LSTM call over the
sequence of blocks, :mod:`~tscnet.stepping.lstm`), so a training step runs a fixed number of ops
whatever the depth, and ``torch.compile`` traces it in one graph.

``tsc:feedback=explicit`` (the first implementation, kept for comparison) also feeds the previous
step back: ``x_d = In_{w(d)}(s_d) + Fb_{w(d−1)}(Δt_{d−1})``; that input depends on the previous
output, so the LSTM runs block by block (a few ops per block).

``mlp`` (the ablation without recurrence): ``Δt_d = Δt_min + (Δt_max − Δt_min) · sigmoid(Out(tanh(Mid(tanh(In(s_d))))))``.

``Out`` has zero weights and the bias that gives Δt ≡ ``dt_init`` at initialisation; the default 1
starts training from the standard ResNet. Δt_min > 0 keeps steps from underflowing to 0 when the
sigmoid saturates (a known failure of adaptive solvers). The summary is not detached: training is
joint, gradients reach the weights. Our interpretation choices (the paper gives none of these
details):

* ``summary="l2"``: ``s_d[c] = ‖W_d[c]‖₂``, the L2 norm of each filter of the block's last conv;
  ``"l2_bn"`` adds ``|γ_d[c]|``, the last BN's scale (post-activation branches only);
  ``"l2_sn"`` (the norm-aware controller) adds the branch's operator-norm estimate
  ``log σ_d = Σ_j log σ(W_{d,j})`` (:mod:`~tscnet.stepping.power_iteration`, one power-iteration step
  per training step): ``x_d = In_{w(d)}(s_d) + a · log σ_d`` with a learned vector ``a``, so the
  controller sees the factor ``‖W_d‖₂`` of the stability bound ``Π_d (1 + ‖W_d‖₂ Δt_d)`` it can hold
  in check;
* hidden size 64, Δt_max = 2, Δt_min = 0.01, Δt_init = 1, implicit feedback. ``dt_init`` may also be
  ``depth:P``: Δt_init = D^(−P) for D residual updates (``depth:0.5`` starts at 1/√D), or ``cait``:
  LayerScale's ε for the depth in blocks (then ``dt_min`` must lie below it, e.g. ``dt_min=1e-6``).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from ..errors import InvalidValue
from .branches import Branch
from .lstm import BlockLSTM
from .multi_tensor import filter_norms
from .policies import POLICY_CLASSES, InitStep, StepPolicy
from .power_iteration import BranchSpectralNorms
from .projections import HiddenToWidth, WidthToHidden

SUMMARIES = ("l2", "l2_bn", "l2_sn")
FEEDBACK = ("implicit", "explicit")


class WeightController(StepPolicy):
    """Shared machinery: weight summaries, per-width projections, the bounded output."""

    learned = True
    controller = True
    options = {"hidden": int, "dt_max": float, "dt_min": float, "dt_init": InitStep, "summary": str}

    def __init__(
        self,
        branches: list[Branch],
        hidden: int = 64,
        dt_max: float = 2.0,
        summary: str = "l2",
        dt_min: float = 0.01,
        dt_init: float | str = 1.0,
    ) -> None:
        super().__init__(branches)
        dt_init = InitStep(dt_init).resolve(branches)
        if summary not in SUMMARIES:
            raise InvalidValue(f"unknown weight summary {summary!r}; valid: {', '.join(SUMMARIES)}")
        if summary == "l2_bn" and any(b.norm is None for b in branches):
            raise InvalidValue(
                "summary 'l2_bn' needs a BN after the last conv of every branch; "
                "pre-activation branches have none (use summary='l2')"
            )
        if not 0.0 < dt_min < dt_init < dt_max:
            raise InvalidValue(
                f"need 0 < dt_min < dt_init < dt_max, got dt_min={dt_min}, dt_init={dt_init}, dt_max={dt_max}"
            )
        if hidden < 1:
            raise InvalidValue(f"hidden must be a positive size, got {hidden}")
        self.hidden, self.dt_min, self.dt_max, self.summary = int(hidden), float(dt_min), float(dt_max), summary
        self.dt_init = float(dt_init)
        k = 2 if summary == "l2_bn" else 1
        self.inp = WidthToHidden([k * c for c in self.sizes], self.hidden)
        # The norm-aware input: log σ_d enters the hidden space along a learned direction a.
        self.spectral = BranchSpectralNorms(branches) if summary == "l2_sn" else None
        self.spectral_in = nn.Parameter(torch.empty(self.hidden).uniform_(-1.0, 1.0)) if summary == "l2_sn" else None
        self.out = HiddenToWidth(self.hidden, self.sizes)
        p = (self.dt_init - self.dt_min) / (self.dt_max - self.dt_min)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, math.log(p / (1.0 - p)))  # sigmoid(bias) = p  ⇔  Δt = dt_init

    def summaries(self) -> Tensor:
        """``s_d`` of every block, flat: ``‖W_d[c]‖₂`` (and ``|γ_d[c]|`` for ``l2_bn``, per block)."""
        norms = filter_norms(cast(list[Tensor], [b.last_layer.weight for b in self.branches]))
        if self.summary != "l2_bn":
            return norms
        scales = torch.cat([cast(nn.BatchNorm2d, b.norm).weight for b in self.branches]).abs()  # l2_bn: BN branches
        return torch.cat([torch.cat(pair) for pair in zip(norms.split(self.sizes), scales.split(self.sizes))])

    def to_step(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z) * (self.dt_max - self.dt_min) + self.dt_min

    def forward(self) -> Tensor:
        # The controller is tiny and data-independent: run it in full precision even under autocast.
        with torch.autocast(self.out.weight.device.type, enabled=False):
            x = self.inp(self.summaries())
            if self.spectral is not None:
                x = x + self.spectral().unsqueeze(1) * self.spectral_in
            return self.to_step(self.logits(x))

    def logits(self, x: Tensor) -> Tensor:
        """``Out(h_d)`` of every block, flat, from the projected summaries ``x`` (D × hidden)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"blocks={len(self.sizes)}, hidden={self.hidden}, dt=[{self.dt_min}, {self.dt_max}], "
            f"dt_init={self.dt_init}, summary={self.summary!r}"
        )


@POLICY_CLASSES.register("mlp")
class MLPController(WeightController):
    """``mlp``: Δt_d from block d's own weights only."""

    def __init__(self, branches: list[Branch], **options) -> None:
        super().__init__(branches, **options)
        self.mid = nn.Linear(self.hidden, self.hidden)

    def logits(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.mid(torch.tanh(x))))


@POLICY_CLASSES.register("tsc")
class LSTMController(WeightController):
    """``tsc``: the paper's TSC_LSTM, one LSTM run across the blocks."""

    options = {**WeightController.options, "feedback": str}

    def __init__(self, branches: list[Branch], feedback: str = "implicit", **options) -> None:
        super().__init__(branches, **options)
        if feedback not in FEEDBACK:
            raise InvalidValue(f"unknown feedback {feedback!r}; valid: {', '.join(FEEDBACK)}")
        self.feedback_mode = feedback
        self.lstm = BlockLSTM(self.hidden, self.hidden)
        self.register_buffer("state0", torch.zeros(1, 1, self.hidden), persistent=False)
        if feedback == "explicit":
            # Only widths that feed a next block: an unused parameter would stall DDP's gradient sync.
            fed_back = sorted(set(self.sizes[:-1]))
            self.feedback = nn.ModuleDict({str(c): nn.Linear(c, self.hidden, bias=False) for c in fed_back})

    def logits(self, x: Tensor) -> Tensor:
        state = (self.state0, self.state0)
        if self.feedback_mode == "implicit":
            h, _ = self.lstm(x.unsqueeze(1), state)  # the whole sequence of blocks in one call
            return self.out(h.view(len(self.sizes), self.hidden))
        # Explicit feedback needs Δt_{d−1} before block d's input: block by block.
        zs: list[Tensor] = []
        for d in range(len(self.sizes)):
            x_d = x[d : d + 1]
            if zs:
                x_d = x_d + self.feedback[str(self.sizes[d - 1])](self.to_step(zs[-1]).unsqueeze(0))
            h, state = self.lstm(x_d.unsqueeze(1), state)
            zs.append(self.out.block(h[0], d))
        return torch.cat(zs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", feedback={self.feedback_mode!r}"
