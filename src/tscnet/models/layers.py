"""Building blocks shared by the CIFAR ResNets: convs, optional norms, shortcuts."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidValue


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    """A 1×1 convolution, no bias."""
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


NormLayer = Callable[[int], nn.Module] | None
NORMS: dict[str, NormLayer] = {"batch": nn.BatchNorm2d, "none": None}


def make_norm(norm_layer: NormLayer, channels: int) -> nn.Module | None:
    """``norm_layer(channels)``, or ``None`` in a norm-free net."""
    return None if norm_layer is None else norm_layer(channels)


class ShortcutA(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` zero-padded from ``in_chs`` to ``out_chs`` channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # Pad the channel dim symmetrically, as the reference CIFAR implementation does.
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def make_shortcut(kind: str, in_chs: int, out_chs: int, stride: int, norm_layer: NormLayer) -> nn.Module | None:
    """The shortcut of a block, or ``None`` for the identity (``norm_layer`` None: no BN after a projection)."""
    if stride == 1 and in_chs == out_chs:
        return None
    if kind == "A":
        return ShortcutA(in_chs, out_chs, stride)
    if kind == "B":
        layers: list[nn.Module] = [conv1x1(in_chs, out_chs, stride)]
        if norm_layer is not None:
            layers.append(norm_layer(out_chs))
        return nn.Sequential(*layers)
    raise InvalidValue(f"unknown shortcut {kind!r}: expected 'A' or 'B'")
