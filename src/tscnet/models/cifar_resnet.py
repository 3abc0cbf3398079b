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
  bottleneck nets to ``B`` as in the reference pre-activation ResNet-164 (1.7 M parameters);
* ``norm="batch"`` (BatchNorm) or ``norm="none"``: norm-free, every BN removed. The stem is then
  ``relu(conv(x))``, the projection shortcut ``B`` a bare 1x1 conv, the pre-activation net's final
  BN a bare ReLU, and the branch ends in its last conv; no conv gains a bias (the only difference
  from the BN net is the missing normalisation), so nothing but the residual scaling keeps the
  forward map stable: ``‖y_D^ε − y_D‖ ≤ ε · Π_d (1 + Lip(F_d) Δt_d)`` (docs/stability.md);
* ``init``: ``"he"`` (Kaiming normal, fan-out, BN γ = 1), ``"zero_last"`` (He, then the last BN's
  γ of every branch, or its last conv when norm-free, set to 0: Goyal et al. 2017, timm's
  ``zero_init_last``, torchvision's ``zero_init_residual``) or ``"fixup"`` (Zhang, Dauphin & Ma,
  ICLR 2019, norm-free only: :class:`FixupBasicBlock` / :class:`FixupBottleneck`, zero last conv,
  the others scaled by ``L^(−1/(2m−2))`` for ``L`` blocks of ``m`` convs, scalar biases and a scalar
  multiplier per branch, a zero classifier; the scalars train at lr/10, see
  :meth:`CifarResNet.param_lr_scale`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidValue
from .fixup import FIXUP_BLOCKS, FixupBasicBlock, FixupBottleneck, fixup_init, is_fixup_scalar
from .layers import NORMS, NormLayer, conv1x1, conv3x3, make_norm, make_shortcut


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))`` (BNs optional)."""

    expansion = 1

    def __init__(
        self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "A", norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn1 = make_norm(norm_layer, planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm_layer, planes)
        self.shortcut = make_shortcut(shortcut, in_chs, planes, stride, norm_layer)

    def zero_init_last(self) -> None:
        nn.init.zeros_(cast(torch.Tensor, self.conv2.weight if self.bn2 is None else self.bn2.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(x)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = self.conv2(F.relu(out))
        if self.bn2 is not None:
            out = self.bn2(out)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """Post-activation bottleneck: ``relu(x + bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))))`` (BNs optional)."""

    expansion = 4

    def __init__(
        self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "B", norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = conv1x1(in_chs, planes)
        self.bn1 = make_norm(norm_layer, planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = make_norm(norm_layer, planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.bn3 = make_norm(norm_layer, out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, norm_layer)

    def zero_init_last(self) -> None:
        nn.init.zeros_(cast(torch.Tensor, self.conv3.weight if self.bn3 is None else self.bn3.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(x)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = self.conv2(F.relu(out))
        if self.bn2 is not None:
            out = self.bn2(out)
        out = self.conv3(F.relu(out))
        if self.bn3 is not None:
            out = self.bn3(out)
        return F.relu(out + identity)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))`` (BNs optional)."""

    expansion = 1

    def __init__(
        self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "A", norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.bn1 = make_norm(norm_layer, in_chs)
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn2 = make_norm(norm_layer, planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = make_shortcut(shortcut, in_chs, planes, stride, None)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(x if self.bn1 is None else self.bn1(x))
        # A projection shortcut shares the pre-activation (He et al., "Identity Mappings").
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        if self.bn2 is not None:
            out = self.bn2(out)
        out = self.conv2(F.relu(out))
        return out + identity


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: ``x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))`` (BNs optional)."""

    expansion = 4

    def __init__(
        self, in_chs: int, planes: int, stride: int = 1, shortcut: str = "B", norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.bn1 = make_norm(norm_layer, in_chs)
        self.conv1 = conv1x1(in_chs, planes)
        self.bn2 = make_norm(norm_layer, planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = make_norm(norm_layer, planes)
        self.conv3 = conv1x1(planes, out_chs)
        self.shortcut = make_shortcut(shortcut, in_chs, out_chs, stride, None)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(x if self.bn1 is None else self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        if self.bn2 is not None:
            out = self.bn2(out)
        out = self.conv2(F.relu(out))
        if self.bn3 is not None:
            out = self.bn3(out)
        out = self.conv3(F.relu(out))
        return out + identity


BlockType = type[BasicBlock | Bottleneck | PreActBasicBlock | PreActBottleneck | FixupBasicBlock | FixupBottleneck]
_BLOCKS: dict[tuple[str, bool], BlockType] = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}
INITS = ("he", "zero_last", "fixup")


class CifarResNet(nn.Module):
    """A 3-stage CIFAR ResNet: stem conv, ``layer1..layer3`` of ``blocks_per_stage`` blocks, pool, fc.

    ``norm_layer=None`` builds the norm-free net; ``init`` is ``"he"``, ``"zero_last"`` or ``"fixup"``
    (the latter with Fixup blocks, norm-free only, and the scalar biases ``stem_bias`` after the
    stem conv and ``head_bias`` before the classifier; ``None`` everywhere else).
    """

    def __init__(
        self,
        block: BlockType,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        init: str = "he",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise InvalidValue(f"unknown init {init!r}: expected one of {', '.join(INITS)}")
        fixup = block in (FixupBasicBlock, FixupBottleneck)
        if fixup != (init == "fixup") or (fixup and norm_layer is not None):
            raise InvalidValue("init 'fixup' goes with Fixup blocks in a norm-free net (norm='none')")
        self.preact = block in (PreActBasicBlock, PreActBottleneck)
        shortcut = shortcut or ("A" if block.expansion == 1 else "B")
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_chans, widths[0])
        # Pre-activation nets normalise after the last block instead of after the stem.
        self.bn1 = None if self.preact else make_norm(norm_layer, widths[0])
        self.stem_bias = nn.Parameter(torch.zeros(1)) if fixup else None
        in_chs = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(block(in_chs, width, stride if j == 0 else 1, shortcut, norm_layer))
                in_chs = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn_final = make_norm(norm_layer, in_chs) if self.preact else None
        self.num_features = in_chs
        self.head_bias = nn.Parameter(torch.zeros(1)) if fixup else None
        self.fc = nn.Linear(in_chs, num_classes)
        self.init = init
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.init == "zero_last":
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    cast(Any, m).zero_init_last()
        elif self.init == "fixup":
            fixup_init(self, self.fc)

    def param_lr_scale(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (the optimizer's rule; absent: 1).

        Fixup's scalar biases and multipliers (and the classifier's bias) train at lr/10, as in
        the authors' CIFAR code; other nets have none.
        """
        if self.init != "fixup":
            return {}
        return {name: 0.1 for name, _ in self.named_parameters() if is_fixup_scalar(name)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preact:
            if self.bn1 is not None:
                x = self.bn1(x)
            if self.stem_bias is not None:
                x = x + self.stem_bias
            x = F.relu(x)
        # mypy: the add_module'd stages are Tensor | Module (TorchScript wants the ignore at the line's end)
        x = self.layer3(self.layer2(self.layer1(x)))  # type: ignore[operator]
        if self.preact:
            if self.bn_final is not None:
                x = self.bn_final(x)
            x = F.relu(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x if self.head_bias is None else x + self.head_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def cifar_resnet(
    depth: int,
    block: str = "basic",
    preact: bool = False,
    num_classes: int = 10,
    in_chans: int = 3,
    shortcut: str | None = None,
    norm: str = "batch",
    init: str = "he",
) -> CifarResNet:
    """A CIFAR ResNet of ``depth = 6n + 2`` (basic) or ``9n + 2`` (bottleneck) layers.

    ``norm``: ``"batch"`` or ``"none"`` (norm-free); ``init``: ``"he"``, ``"zero_last"`` or
    ``"fixup"`` (norm-free, post-activation only).
    """
    if (block, preact) not in _BLOCKS:
        raise InvalidValue(f"unknown block {block!r}: expected 'basic' or 'bottleneck'")
    if norm not in NORMS:
        raise InvalidValue(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")
    if init not in INITS:
        raise InvalidValue(f"unknown init {init!r}: expected one of {', '.join(INITS)}")
    if init == "fixup" and (norm != "none" or preact):
        raise InvalidValue(
            "init 'fixup' is for norm-free post-activation nets: use norm='none' and preact=False "
            "(Fixup replaces normalisation; with BN use init='zero_last')"
        )
    per_block = 2 if block == "basic" else 3
    if depth < 2 + 3 * per_block or (depth - 2) % (3 * per_block):
        form = "6n+2" if block == "basic" else "9n+2"
        raise InvalidValue(f"depth {depth} is not of the form {form} (n >= 1) for {block} blocks")
    n = (depth - 2) // (3 * per_block)
    cls = FIXUP_BLOCKS[block] if init == "fixup" else _BLOCKS[block, preact]
    return CifarResNet(cls, n, num_classes, in_chans, shortcut=shortcut, norm_layer=NORMS[norm], init=init)


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

#: Our CIFAR ResNets by name (``cifar_resnet20``, ...): ``fn(**kwargs) -> CifarResNet``.
CIFAR_MODELS: dict[str, Callable[..., CifarResNet]] = {
    name: fn for name, fn in globals().items() if name.startswith("cifar_") and name != "cifar_resnet" and callable(fn)
}
