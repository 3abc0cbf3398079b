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

Cost: all convs of one weight shape are done together (``torch.bmm`` over a stack), so the op count
per training step depends on the number of distinct conv shapes (5 in a CIFAR ResNet of any depth),
not on the depth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .branches import Branch


def branch_convs(branch: Branch) -> list[nn.Conv2d]:
    """The convs of a block's residual branch: its direct ``nn.Conv2d`` children (shortcuts are containers)."""
    return [m for m in branch.block.children() if isinstance(m, nn.Conv2d)]


class BranchSpectralNorms(nn.Module):
    """``log σ_d`` of every block (a ``D``-vector), from one power-iteration step per training forward."""

    def __init__(self, branches: list[Branch]) -> None:
        super().__init__()
        self.__dict__["branches"] = branches  # the model's blocks, not submodules of this module
        shapes: dict[torch.Size, list[tuple[int, int]]] = {}  # weight shape -> [(block, conv index)]
        for d, branch in enumerate(branches):
            for j, conv in enumerate(branch_convs(branch)):
                shapes.setdefault(conv.weight.shape, []).append((d, j))
        self.groups = list(shapes.values())
        for g, (shape, members) in enumerate(shapes.items()):
            u = F.normalize(torch.randn(len(members), shape[0]), dim=1)
            self.register_buffer(f"u{g}", u)  # persistent: a resumed run continues the same iteration
        block_of = [d for members in self.groups for d, _ in members]
        self.register_buffer("block_of", torch.tensor(block_of), persistent=False)

    def forward(self) -> Tensor:
        logs = []
        for g, members in enumerate(self.groups):
            convs = [branch_convs(self.branches[d])[j] for d, j in members]
            w = torch.stack([c.weight for c in convs]).flatten(2)  # n × C_out × C_in·k·k
            u = getattr(self, f"u{g}")
            with torch.no_grad():
                v = F.normalize(torch.bmm(u.unsqueeze(1), w).squeeze(1), dim=1)
            wv = torch.bmm(w, v.unsqueeze(2)).squeeze(2)  # n × C_out
            sigma = wv.norm(dim=1).clamp_min(1e-12)
            if self.training:
                u.copy_(wv.detach() / sigma.detach().unsqueeze(1))
            logs.append(sigma.log())
        flat = torch.cat(logs)
        return flat.new_zeros(len(self.branches)).index_add(0, self.block_of, flat)

    def extra_repr(self) -> str:
        return f"blocks={len(self.branches)}, shapes={len(self.groups)}"
