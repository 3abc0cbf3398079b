"""Fixup residual blocks (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning Without
Normalization", ICLR 2019): norm-free branches made trainable by their initialisation.

A Fixup branch of ``m`` convs carries scalar biases before every conv and activation and one scalar
multiplier at its end (basic block, ``m = 2``)::

    F(x) = s · conv2(relu(conv1(x + a1) + b1) + a2) + b2,      y = relu(x' + F(x)),  x' = shortcut(x + a1)

and is initialised (:func:`fixup_init`) so that every branch starts at ``F ≡ b2 = 0``: the last conv
is zero, the others are He-initialised and scaled by ``L^(−1/(2m−2))`` for ``L`` residual blocks,
the biases are 0 and ``s = 1``; the network's classifier starts at zero too. As in the authors'
CIFAR code, the scalars (every parameter named ``bias*`` or ``scale``) train at a tenth of the
learning rate (:meth:`~tscnet.models.cifar_resnet.CifarResNet.param_lr_scale`).

Fixup is a peer of the step policies, not a model they attach to: its multiplier ``s`` already is
a learnable per-branch step, so ``attach_steps`` refuses Fixup blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import NormLayer, conv1x1, conv3x3, make_shortcut


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), value))


class FixupBasicBlock(nn.Module):
    """``relu(shortcut(x + a1) + s·conv2(relu(conv1(x + a1) + b1) + a2) + b2)``."""

    expansion = 1
    convs = 2

    def __init__(
        self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "A", norm_layer: NormLayer = None
    ) -> None:
        super().__init__()
        self.bias1a, self.bias1b, self.bias2a = _scalar(0.0), _scalar(0.0), _scalar(0.0)
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.conv2 = conv3x3(planes, planes)
        self.scale, self.bias2b = _scalar(1.0), _scalar(0.0)
        self.shortcut = make_shortcut(shortcut, in_chs, planes, stride, None)

    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x + self.bias1a)
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        return F.relu(out + identity)


class FixupBottleneck(nn.Module):
    """``relu(x' + s·conv3(relu(conv2(relu(conv1(x + a1) + b1) + a2) + b2) + a3) + b3)``."""

    expansion = 4
    convs = 3

    def __init__(
        self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "B", norm_layer: NormLayer = None
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.bias1a, self.bias1b, self.bias2a, self.bias2b, self.bias3a = (_scalar(0.0) for _ in range(5))
        self.conv1 = conv1x1(in_chs, planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.conv3 = conv1x1(planes, out_chs)
        self.scale, self.bias3b = _scalar(1.0), _scalar(0.0)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, None)

    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x + self.bias1a)
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = F.relu(self.conv2(out + self.bias2a) + self.bias2b)
        out = self.conv3(out + self.bias3a) * self.scale + self.bias3b
        return F.relu(out + identity)


FIXUP_BLOCKS: dict[str, type[FixupBasicBlock | FixupBottleneck]] = {
    "basic": FixupBasicBlock,
    "bottleneck": FixupBottleneck,
}


@torch.no_grad()
def fixup_init(model: nn.Module, classifier: nn.Linear | None) -> None:
    """Fixup's rescaling, applied after the He initialisation of every conv.

    For each of the ``L`` blocks: ``W_i ← W_i · L^(−1/(2m−2))`` for the branch's first ``m − 1``
    convs, ``W_m ← 0``; the classifier's weight and bias ← 0.
    """
    blocks = [m for m in model.modules() if isinstance(m, (FixupBasicBlock, FixupBottleneck))]
    for block in blocks:
        *scaled, last = block.branch_convs()
        for conv in scaled:
            conv.weight.mul_(len(blocks) ** (-1.0 / (2 * block.convs - 2)))
        nn.init.zeros_(last.weight)
    if classifier is not None:
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)


def is_fixup_scalar(name: str) -> bool:
    """The parameters the authors train at lr/10: every ``bias*`` and ``scale`` (``fc.bias`` too)."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf.startswith("bias") or leaf == "scale" or leaf in ("stem_bias", "head_bias")
