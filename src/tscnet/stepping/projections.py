"""Per-width linear maps for blocks of different widths, all blocks in one matmul.

A ResNet's stages differ in width (16/32/64 channels, 256…2048), so a controller needs one
projection per width between the channel space of a block (``C_d`` values) and its hidden size
``H``. Instead of one ``nn.Linear`` call per width (or per block), every block's vector is placed at
its width's columns of a zero-padded ``D × Σ_w C_w`` matrix, so that one ``addmm`` applies the
right projection to every block:

* :class:`WidthToHidden`: ``x_d = A_{w(d)} s_d`` (``s`` flat, ``Σ_d C_d`` values → ``D × H``; no bias:
  the layer after it has one, and a per-width bias would cost ops in every step);
* :class:`HiddenToWidth`: ``z_d = B_{w(d)} h_d + b_{w(d)}`` (``D × H`` → ``Σ_d C_d`` values, flat).

The parameters are the per-width ``nn.Linear`` weights side by side (same count, same init).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _layout(sizes: Sequence[int]) -> tuple[list[int], Tensor]:
    """Distinct widths (first-seen order) and the column of each block value among them."""
    widths = list(dict.fromkeys(sizes))
    offsets = [sum(widths[:i]) for i in range(len(widths))]
    columns = torch.cat([torch.arange(c) + offsets[widths.index(c)] for c in sizes])
    return widths, columns


def _flat_positions(sizes: Sequence[int], columns: Tensor, total_width: int) -> Tensor:
    """Position of each block value in the row-major ``D × Σ_w C_w`` matrix."""
    rows = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))
    return rows * total_width + columns


class WidthToHidden(nn.Module):
    """``x_d = A_{w(d)} s_d``: block vectors of ``sizes[d]`` values to ``D × hidden``."""

    positions: Tensor  # buffer

    def __init__(self, sizes: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.sizes = list(sizes)
        widths, columns = _layout(sizes)
        self.widths = widths
        self.weight = nn.Parameter(torch.empty(sum(widths), hidden))  # rows: the A_w^T side by side
        self.register_buffer("positions", _flat_positions(sizes, columns, sum(widths)), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # nn.Linear's default init, with each width's own fan-in.
        start = 0
        for c in self.widths:
            nn.init.uniform_(self.weight[start : start + c], -1.0 / math.sqrt(c), 1.0 / math.sqrt(c))
            start += c

    def forward(self, s: Tensor) -> Tensor:
        padded = s.new_zeros(len(self.sizes) * self.weight.shape[0]).index_put((self.positions,), s)
        return padded.view(len(self.sizes), -1).mm(self.weight)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, hidden={self.weight.shape[1]}, blocks={len(self.sizes)}"


class HiddenToWidth(nn.Module):
    """``z_d = B_{w(d)} h_d + b_{w(d)}``: ``D × hidden`` to the flat ``Σ_d sizes[d]`` values."""

    positions: Tensor  # buffer

    def __init__(self, hidden: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        widths, columns = _layout(sizes)
        self.widths = widths
        self.weight = nn.Parameter(torch.empty(hidden, sum(widths)))  # columns: the B_w^T side by side
        self.bias = nn.Parameter(torch.empty(sum(widths)))
        self.register_buffer("positions", _flat_positions(sizes, columns, sum(widths)), persistent=False)
        self.offsets = [int(columns[sum(self.sizes[:d])]) for d in range(len(self.sizes))]
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, h: Tensor) -> Tensor:
        return torch.addmm(self.bias, h, self.weight).take(self.positions)

    def block(self, h: Tensor, d: int) -> Tensor:
        """``z_d`` alone, from ``h_d`` (``1 × hidden``): for controllers that loop over the blocks."""
        cols = slice(self.offsets[d], self.offsets[d] + self.sizes[d])
        return torch.addmm(self.bias[cols], h, self.weight[:, cols])[0]

    def extra_repr(self) -> str:
        return f"hidden={self.weight.shape[0]}, widths={self.widths}, blocks={len(self.sizes)}"
