"""The controller's LSTM: ``nn.LSTM``'s parameters and equations, fast in eager and compilable.

One layer, unbatched (the controller runs once per forward pass, not per sample)::

    (i, f, g, o) = W_ih x_d + b_ih + W_hh h_{d−1} + b_hh
    c_d = σ(f) ⊙ c_{d−1} + σ(i) ⊙ tanh(g),   h_d = σ(o) ⊙ tanh(c_d)

Eager runs the whole sequence as one fused ``torch.lstm`` call (oneDNN on a CPU, cuDNN on a GPU:
one op forward, one backward). Dynamo cannot trace RNN modules or ops (it splits the graph at
every call), so under ``torch.compile`` the same equations are written out and the compiler
unrolls and fuses them. The parameter names are nn.LSTM's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, Tensor]


class BlockLSTM(nn.Module):
    """``(h_1..h_L, (h_L, c_L)) = LSTM(x_1..x_L, (h_0, c_0))`` for ``x`` of shape ``L × 1 × H``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.LSTM's init
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        params: list[Tensor] = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
        if not torch.compiler.is_compiling():
            out, h, c = torch.lstm(x, state, params, True, 1, 0.0, self.training, False, False)
            return out, (h, c)
        h, c = state[0][0], state[1][0]
        outs = []
        for x_t in x.unbind(0):
            gates = F.linear(x_t, self.weight_ih_l0, self.bias_ih_l0) + F.linear(h, self.weight_hh_l0, self.bias_hh_l0)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), (h.unsqueeze(0), c.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{self.weight_ih_l0.shape[1]}, {self.hidden_size}"
