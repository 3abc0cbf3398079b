"""The controller's view of the stability bound: an estimate of each branch's operator norm.

The perturbation bound ``‖y_D^ε − y_D‖ ≤ ε · Π_d (1 + ‖W_d‖₂ Δt_d)`` (docs/design.md) involves the
Lipschitz constant of every residual branch. For a branch of convs ``W_{d,1} … W_{d,m}`` joined by
1-Lipschitz activations it is at most ``Π_j σ(W_{d,j})``; we estimate each ``σ(W)`` as the largest
singular value of the filter matrix (``W`` reshaped to ``C_out × C_in·k·k``, as
``torch.nn.utils.spectral_norm`` does) and return, per block,

    log σ_d = Σ_j log σ(W_{d,j}),      σ(W) ≈ ‖W v‖,   v = Wᵀu / ‖Wᵀu‖,   then u ← W v / ‖W v‖

with one warm-started power-iteration step per training forward pass (``u`` persists in a buffer,
so the estimate converges over the first steps — within ~200 for He-initialised filters, whose top
singular values lie close together — and then tracks the slowly moving weights; in eval mode ``u``
stays). ``v`` is a constant for autograd, so ``∂σ/∂W = u' vᵀ`` with ``u' = Wv/‖Wv‖`` —
the gradient of the top singular value at convergence — and the controller's input trains jointly
with the network. BN layers are not in
the estimate: their scale depends on batch statistics, not on weights alone.

Cost: all convs go through one ``torch.bmm`` chain as a zero-padded batch of filter matrices, so a
training step costs a few ops per distinct conv shape (5 in a CIFAR ResNet of any depth) plus one
gradient accumulation per conv weight (it also receives the conv's own gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .branches import Branch
from .multi_tensor import _plain_autograd


class _PaddedFilterMatrices(torch.autograd.Function):
    """Conv weights (grouped by shape, groups contiguous) → one zero-padded batch ``N × R × K`` of
    filter matrices; the backward crops each group's gradient and unbinds it in a few ops per shape
    (autograd's generic ``stack`` backward would slice once per weight)."""

    @staticmethod
    def forward(counts: tuple[int, ...], rows: int, cols: int, *weights: Tensor) -> Tensor:
        return _padded(counts, rows, cols, weights)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        counts, rows, cols, *weights = inputs
        ctx.counts = counts
        starts = [sum(counts[:g]) for g in range(len(counts))]
        ctx.shapes = [weights[i].shape for i in starts]

    @staticmethod
    def backward(ctx, grad: Tensor):
        grads: list[Tensor] = []
        for g, shape in zip(grad.split(ctx.counts), ctx.shapes):
            grads.extend(g[:, : shape[0], : shape[1:].numel()].reshape(-1, *shape).unbind(0))
        return (None, None, None, *grads)


def _padded(counts: tuple[int, ...], rows: int, cols: int, weights) -> Tensor:
    mats, start = [], 0
    for n in counts:
        m = torch.stack(weights[start : start + n]).flatten(2)
        mats.append(F.pad(m, (0, cols - m.shape[2], 0, rows - m.shape[1])))  # zeros keep every singular value
        start += n
    return torch.cat(mats)


class BranchSpectralNorms(nn.Module):
    """``log σ_d`` of every block (a ``D``-vector), from one power-iteration step per training forward.

    All branch convs are iterated together as one zero-padded batch of filter matrices (zero rows
    and columns leave the singular values unchanged), so the op count per step is a few per
    distinct conv shape plus one gradient accumulation per conv, whatever the depth.
    """

    branches: list[Branch]  # the model's blocks, not submodules of this module
    u: Tensor  # buffers
    block_of: Tensor

    def __init__(self, branches: list[Branch]) -> None:
        super().__init__()
        self.__dict__["branches"] = branches
        shapes: dict[torch.Size, list[tuple[int, int]]] = {}  # weight shape -> [(block, conv index)]
        for d, branch in enumerate(branches):
            for j, weight in enumerate(branch.weights()):
                shapes.setdefault(weight.shape, []).append((d, j))
        self.members = [m for members in shapes.values() for m in members]  # (block, conv) in group order
        self.counts = tuple(len(members) for members in shapes.values())
        self.rows = max(shape[0] for shape in shapes)
        self.cols = max(shape[1:].numel() for shape in shapes)
        u = torch.zeros(len(self.members), self.rows)
        start = 0
        for shape, members in shapes.items():
            u[start : start + len(members), : shape[0]] = F.normalize(torch.randn(len(members), shape[0]), dim=1)
            start += len(members)
        self.register_buffer("u", u)  # persistent: a resumed run continues the same iteration
        self.register_buffer("block_of", torch.tensor([d for d, _ in self.members]), persistent=False)

    def forward(self) -> Tensor:
        per_branch = [branch.weights() for branch in self.branches]
        weights = [per_branch[d][j] for d, j in self.members]
        if _plain_autograd():  # torch.compile / torch.func: plain autograd through the same formula
            w = _padded(self.counts, self.rows, self.cols, weights)
        else:
            w = _PaddedFilterMatrices.apply(self.counts, self.rows, self.cols, *weights)  # N × R × K
        with torch.no_grad():
            v = F.normalize(torch.bmm(self.u.unsqueeze(1), w).squeeze(1), dim=1)
        wv = torch.bmm(w, v.unsqueeze(2)).squeeze(2)  # N × R
        sigma = wv.norm(dim=1).clamp_min(1e-12)
        if self.training:
            self.u.copy_(wv.detach() / sigma.detach().unsqueeze(1))
        return sigma.new_zeros(len(self.branches)).index_add(0, self.block_of, sigma.log())

    def extra_repr(self) -> str:
        return f"blocks={len(self.branches)}, convs={len(self.members)}, shapes={len(self.counts)}"
