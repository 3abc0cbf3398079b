"""Residual branches: which modules of a block hold ``F`` in ``y + Δt ⊙ F(y)``.

A registry maps each supported block class (ours, torchvision's, timm's) to an adapter that
describes its branch as a :class:`Branch`. Blocks are keyed by qualified class name, so
timm and torchvision are only imported when the user builds one of their models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..registry import Registry, qualname


@dataclass(eq=False)
class Branch:
    """The residual branch of one block.

    Attributes:
        block: the residual block.
        conv_attr: attribute of ``block`` holding the branch's last conv (controller input,
            fold target of pre-activation branches).
        norm_attr: attribute holding the branch's last BN (fold target), ``None`` if the branch
            ends in a conv (pre-activation).
        se_attr: attribute holding a channel gate between the last BN and the add, or ``None``.
        site: where Δt is applied while training: ``"norm"``, ``"conv"`` or ``"slot"``.
        site_attr: attribute the site replaces.
        refusal: why steps must not be attached to this block (``None``: they may); the block
            still counts as a residual block with Δt ≡ 1 for analysis.
    """

    block: nn.Module
    conv_attr: str
    norm_attr: Optional[str]
    se_attr: Optional[str] = None
    site: str = "norm"
    site_attr: str = ""
    refusal: Optional[str] = None

    @property
    def conv(self) -> nn.Conv2d:
        return getattr(self.block, self.conv_attr)

    @property
    def norm(self) -> Optional[nn.BatchNorm2d]:
        return None if self.norm_attr is None else getattr(self.block, self.norm_attr)

    @property
    def se(self) -> Optional[nn.Module]:
        return None if self.se_attr is None else getattr(self.block, self.se_attr)

    @property
    def channels(self) -> int:
        return self.conv.out_channels


Adapter = Callable[[nn.Module], Branch]
_ADAPTERS: Registry[Adapter] = Registry("residual block adapter")
register_block = _ADAPTERS.register  # register_block("module.Class", ...)(adapter)


def supported_blocks() -> list[str]:
    return _ADAPTERS.names()


def _post_activation(conv_attr: str, norm_attr: str) -> Adapter:
    def adapter(block: nn.Module) -> Branch:
        if getattr(block, norm_attr) is None:  # a norm-free branch ends in its conv: scale its filters
            return Branch(block, conv_attr, None, site="conv", site_attr=conv_attr)
        return Branch(block, conv_attr, norm_attr, site="norm", site_attr=norm_attr)

    return adapter


def _fixup(conv_attr: str) -> Adapter:
    def adapter(block: nn.Module) -> Branch:
        return Branch(block, conv_attr, None, site="conv", site_attr=conv_attr, refusal=(
            f"cannot attach steps to {type(block).__name__}: a Fixup branch already ends in its own learnable "
            "scalar multiplier (a per-branch step); compare Fixup as a peer with steps 'none', or attach steps "
            "to the norm-free net without Fixup (init 'he')"))

    return adapter


def _pre_activation(conv_attr: str) -> Adapter:
    def adapter(block: nn.Module) -> Branch:
        return Branch(block, conv_attr, None, site="conv", site_attr=conv_attr)

    return adapter


def _timm_block(conv_attr: str, norm_attr: str) -> Adapter:
    def adapter(block: nn.Module) -> Branch:
        if getattr(block, "se", None) is None and type(getattr(block, norm_attr)) is nn.BatchNorm2d:
            return Branch(block, conv_attr, norm_attr, site="norm", site_attr=norm_attr)
        # A gate (SE, ECA, ...) or a custom norm follows the last BN: scale in timm's
        # drop_path slot, which runs right before the residual add.
        return Branch(block, conv_attr, norm_attr, se_attr="se", site="slot", site_attr="drop_path")

    return adapter


register_block("tscnet.models.cifar_resnet.BasicBlock")(_post_activation("conv2", "bn2"))
register_block("tscnet.models.cifar_resnet.Bottleneck")(_post_activation("conv3", "bn3"))
register_block("tscnet.models.cifar_resnet.PreActBasicBlock")(_pre_activation("conv2"))
register_block("tscnet.models.cifar_resnet.PreActBottleneck")(_pre_activation("conv3"))
register_block("tscnet.models.fixup.FixupBasicBlock")(_fixup("conv2"))
register_block("tscnet.models.fixup.FixupBottleneck")(_fixup("conv3"))
register_block("torchvision.models.resnet.BasicBlock")(_post_activation("conv2", "bn2"))
register_block("torchvision.models.resnet.Bottleneck")(_post_activation("conv3", "bn3"))
register_block("timm.models.resnet.BasicBlock")(_timm_block("conv2", "bn2"))
register_block("timm.models.resnet.Bottleneck")(_timm_block("conv3", "bn3"))


def _looks_residual(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "block" in name or "bottleneck" in name


def find_branches(model: nn.Module) -> list[Branch]:
    """The residual branches of ``model`` in network order.

    Raises:
        TypeError: a residual-looking block has no adapter, or the model has no residual block.
    """
    branches: list[Branch] = []
    unsupported: set[str] = set()

    def visit(module: nn.Module) -> None:
        adapter = _ADAPTERS.get(qualname(module))
        if adapter is not None:
            branches.append(adapter(module))
            return  # a registered block's children are its branch, never more blocks
        if _looks_residual(module) and not any(_looks_residual(c) for c in module.children()):
            unsupported.add(qualname(module))
        for child in module.children():
            visit(child)

    visit(model)
    if unsupported:
        raise TypeError(
            f"cannot attach steps to block type(s) {', '.join(sorted(unsupported))}: no adapter "
            f"registered (supported: {', '.join(supported_blocks())}); "
            "see tscnet.stepping.branches.register_block"
        )
    if not branches:
        raise TypeError(f"{type(model).__name__} has no residual block of a supported type "
                        f"({', '.join(supported_blocks())})")
    return branches
