"""CIFAR-style ResNets (He et al. 2016, "Deep Residual Learning" §4.2 and "Identity Mappings").

Three stages of widths 16/32/64 on a 3x3 stem, global average pooling, one linear classifier.
Each residual block is one forward-Euler step ``y_{d+1} = y_d + F(y_d)`` (Δt ≡ 1); the step
policies of :mod:`tscnet.stepping` insert Δt without changing any parameter name here.

* basic blocks (two 3x3 convs): depth ``6n + 2``; bottleneck blocks (1x1, 3x3, 1x1, expansion 4):
  depth ``9n + 2``;
* post-activation (``conv-bn-relu``, residual add then ReLU) or pre-activation
  (``bn-relu-conv``, identity path kept clean);
* shortcut ``"A"`` (parameter-free: stride-2 subsampling and zero channel padding, the CIFAR
  reference) or ``"B"`` (1x1 projection when the shape changes). Basic nets default to ``A``;
  bottleneck nets to ``B`` as in the reference pre-activation ResNet-164 (1.7 M parameters).
"""
from __future__ import annotations

from typing import Callable, Optional, Type, Union

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


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


def make_shortcut(
    kind: str, in_chs: int, out_chs: int, stride: int, norm: bool
) -> Optional[nn.Module]:
    """The shortcut of a block, or ``None`` for the identity."""
    if stride == 1 and in_chs == out_chs:
        return None
    if kind == "A":
        return ShortcutA(in_chs, out_chs, stride)
    if kind == "B":
        layers = [conv1x1(in_chs, out_chs, stride)]
        if norm:
            layers.append(nn.BatchNorm2d(out_chs))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown shortcut {kind!r}: expected 'A' or 'B'")


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(shortcut, in_chs, planes, stride, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """Post-activation bottleneck: ``relu(x + bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))))``."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = conv1x1(in_chs, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = make_shortcut(shortcut, in_chs, planes, stride, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # A projection shortcut shares the pre-activation (He et al., "Identity Mappings").
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: ``x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))``."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = conv1x1(in_chs, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + identity


BlockType = Type[Union[BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck]]
_BLOCKS: dict[tuple[str, bool], BlockType] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


class CifarResNet(nn.Module):
    """A 3-stage CIFAR ResNet: stem conv, ``layer1..layer3`` of ``blocks_per_stage`` blocks, pool, fc."""

    def __init__(
        self,
        block: BlockType,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.preact = block in (PreActBasicBlock, PreActBottleneck)
        shortcut = shortcut or ("A" if block.expansion == 1 else "B")
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_chans, widths[0])
        # Pre-activation nets normalise after the last block instead of after the stem.
        self.bn1 = None if self.preact else nn.BatchNorm2d(widths[0])
        in_chs = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(block(in_chs, width, stride if j == 0 else 1, shortcut))
                in_chs = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn_final = nn.BatchNorm2d(in_chs) if self.preact else None
        self.num_features = in_chs
        self.fc = nn.Linear(in_chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = F.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.bn_final is not None:
            x = F.relu(self.bn_final(x))
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def cifar_resnet(
    depth: int,
    block: str = "basic",
    preact: bool = False,
    num_classes: int = 10,
    in_chans: int = 3,
    shortcut: Optional[str] = None,
) -> CifarResNet:
    """A CIFAR ResNet of ``depth = 6n + 2`` (basic) or ``9n + 2`` (bottleneck) layers."""
    if (block, preact) not in _BLOCKS:
        raise ValueError(f"unknown block {block!r}: expected 'basic' or 'bottleneck'")
    per_block = 2 if block == "basic" else 3
    if depth < 2 + 3 * per_block or (depth - 2) % (3 * per_block):
        form = "6n+2" if block == "basic" else "9n+2"
        raise ValueError(f"depth {depth} is not of the form {form} (n >= 1) for {block} blocks")
    n = (depth - 2) // (3 * per_block)
    return CifarResNet(_BLOCKS[block, preact], n, num_classes, in_chans, shortcut=shortcut)


def _named(depth: int, block: str = "basic", preact: bool = False) -> Callable[..., CifarResNet]:
    def constructor(**kwargs) -> CifarResNet:
        return cifar_resnet(depth, block=block, preact=preact, **kwargs)

    constructor.__doc__ = f"CIFAR ResNet-{depth} ({'pre-activation ' if preact else ''}{block} blocks)."
    return constructor


cifar_resnet8 = _named(8)  # tiny: quick tests and smoke runs
cifar_resnet20 = _named(20)
cifar_resnet32 = _named(32)
cifar_resnet44 = _named(44)
cifar_resnet56 = _named(56)
cifar_resnet110 = _named(110)
cifar_resnet1202 = _named(1202)
cifar_preact_resnet20 = _named(20, preact=True)
cifar_preact_resnet56 = _named(56, preact=True)
cifar_preact_resnet110 = _named(110, preact=True)
cifar_preact_resnet164 = _named(164, block="bottleneck", preact=True)
cifar_resnet164 = _named(164, block="bottleneck")

CIFAR_MODELS: dict[str, Callable[..., CifarResNet]] = {
    name: fn for name, fn in globals().items() if name.startswith("cifar_") and name != "cifar_resnet"
    and callable(fn)
}
