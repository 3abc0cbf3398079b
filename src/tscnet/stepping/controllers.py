"""Step controllers Θ: step sizes computed from the network's own weights (DESIGN.md §1).

``tsc`` (the paper's TSC_LSTM)::

    s_d   = summary(w_d)                                  per-output-channel weight summary, C_d
    x_d   = In_{s(d)}(s_d) + Fb_{s(d−1)}(Δt_{d−1})        (no feedback term for d = 0)
    h_d, c_d = LSTMCell(x_d, (h_{d−1}, c_{d−1}))          (h_{−1} = c_{−1} = 0), one cell for all blocks
    Δt_d  = Δt_min + (Δt_max − Δt_min) · sigmoid(Out_{s(d)}(h_d))    channel-wise, in [Δt_min, Δt_max]

``mlp`` (the ablation without recurrence): ``Δt_d = Δt_min + (Δt_max − Δt_min) · sigmoid(Out_s(tanh(Mid(tanh(In_s(s_d))))))``.

``In_s``/``Fb_s``/``Out_s`` are per-width projections (stages differ in width). ``Out_s`` has zero
weights and the bias that gives Δt ≡ ``dt_init`` at initialisation; the default 1 starts training
from the standard ResNet. Δt_min > 0 keeps steps from underflowing to 0 when the sigmoid saturates (a known failure
of adaptive solvers). The summary is not detached: training is joint, gradients reach the weights.
Our interpretation choices (the paper gives none of these details):

* ``summary="l2"``: ``s_d[c] = ‖W_d[c]‖₂``, the L2 norm of each filter of the block's last conv;
  ``"l2_bn"`` adds ``|γ_d[c]|``, the last BN's scale (post-activation branches only).
* hidden size 64, Δt_max = 2, Δt_min = 0.01, Δt_init = 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .branches import Branch
from .policies import StepPolicy, register_policy

SUMMARIES = ("l2", "l2_bn")


class WeightController(StepPolicy):
    """Shared machinery: weight summaries grouped in runs of blocks with equal conv shapes."""

    def __init__(self, branches: list[Branch], hidden: int = 64, dt_max: float = 2.0, summary: str = "l2",
                 dt_min: float = 0.01, dt_init: float = 1.0) -> None:
        super().__init__(branches)
        if summary not in SUMMARIES:
            raise ValueError(f"unknown weight summary {summary!r}; valid: {', '.join(SUMMARIES)}")
        if summary == "l2_bn" and any(b.norm is None for b in branches):
            raise ValueError("summary 'l2_bn' needs a BN after the last conv of every branch; "
                             "pre-activation branches have none (use summary='l2')")
        if not 0.0 < dt_min < dt_init < dt_max:
            raise ValueError(f"need 0 < dt_min < dt_init < dt_max, got dt_min={dt_min}, dt_init={dt_init}, dt_max={dt_max}")
        self.hidden, self.dt_min, self.dt_max, self.summary = int(hidden), float(dt_min), float(dt_max), summary
        self.dt_init = float(dt_init)
        # Consecutive blocks whose last convs have equal shapes: their summaries batch in one op.
        self.groups: list[tuple[int, int]] = []
        for i, b in enumerate(branches):
            if self.groups and branches[self.groups[-1][0]].conv.weight.shape == b.conv.weight.shape:
                self.groups[-1] = (self.groups[-1][0], i + 1)
            else:
                self.groups.append((i, i + 1))
        self.widths = sorted(set(self.sizes))
        k = 2 if summary == "l2_bn" else 1
        self.inp = nn.ModuleDict({str(c): nn.Linear(k * c, self.hidden) for c in self.widths})
        self.out = nn.ModuleDict({str(c): nn.Linear(self.hidden, c) for c in self.widths})
        p = (self.dt_init - self.dt_min) / (self.dt_max - self.dt_min)
        logit = math.log(p / (1.0 - p))  # sigmoid(logit) = p  ⇔  Δt = dt_init
        for layer in self.out.values():
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, logit)

    def summaries(self) -> list[torch.Tensor]:
        """One (blocks_in_group, k·C) tensor of weight summaries per group."""
        out = []
        for start, end in self.groups:
            group = self.branches[start:end]
            w = torch.stack([b.conv.weight for b in group]).float()
            s = w.flatten(2).norm(dim=2)
            if self.summary == "l2_bn":
                s = torch.cat([s, torch.stack([b.norm.weight for b in group]).float().abs()], dim=1)
            out.append(s)
        return out

    def to_step(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z) * (self.dt_max - self.dt_min) + self.dt_min

    def compute(self) -> list[torch.Tensor]:
        # The controller is tiny and data-independent: run it in fp32 even under autocast.
        device_type = self.out[str(self.widths[0])].weight.device.type
        with torch.autocast(device_type, enabled=False):
            return self._compute()

    def _compute(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"blocks={len(self.sizes)}, hidden={self.hidden}, dt=[{self.dt_min}, {self.dt_max}], "
                f"dt_init={self.dt_init}, summary={self.summary!r}")


class MLPController(WeightController):
    """``mlp``: Δt_d from block d's own weights only."""

    def __init__(self, branches: list[Branch], **options) -> None:
        super().__init__(branches, **options)
        self.mid = nn.Linear(self.hidden, self.hidden)

    def _compute(self) -> list[torch.Tensor]:
        steps: list[torch.Tensor] = []
        for (start, _), s in zip(self.groups, self.summaries()):
            key = str(self.sizes[start])
            h = torch.tanh(self.mid(torch.tanh(self.inp[key](s))))
            steps.extend(self.to_step(self.out[key](h)).unbind(0))
        return steps


class LSTMController(WeightController):
    """``tsc``: the paper's TSC_LSTM, one LSTM cell run across the blocks with Δt fed back."""

    def __init__(self, branches: list[Branch], **options) -> None:
        super().__init__(branches, **options)
        # Only widths that feed a next block: an unused parameter would stall DDP's gradient sync.
        fed_back = sorted(set(self.sizes[:-1]))
        self.feedback = nn.ModuleDict({str(c): nn.Linear(c, self.hidden, bias=False) for c in fed_back})
        self.cell = nn.LSTMCell(self.hidden, self.hidden)

    def _compute(self) -> list[torch.Tensor]:
        inputs = torch.cat([self.inp[str(self.sizes[start])](s) for (start, _), s in zip(self.groups, self.summaries())])
        state = (inputs.new_zeros(1, self.hidden), inputs.new_zeros(1, self.hidden))
        steps: list[torch.Tensor] = []
        for d, width in enumerate(self.sizes):
            x = inputs[d : d + 1]
            if steps:
                x = x + self.feedback[str(self.sizes[d - 1])](steps[-1].unsqueeze(0))
            state = self.cell(x, state)
            steps.append(self.to_step(self.out[str(width)](state[0]))[0])
        return steps


_OPTIONS = {"hidden": int, "dt_max": float, "dt_min": float, "dt_init": float, "summary": str}
register_policy("mlp", MLPController, **_OPTIONS)
register_policy("tsc", LSTMController, **_OPTIONS)
