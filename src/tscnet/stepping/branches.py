"""Residual branches: which modules of a block hold ``F`` in ``y + Δt ⊙ F(y)``.

A registry (:data:`BLOCK_TYPES`) maps each supported block class (ours, torchvision's, timm's) to
its :class:`BlockType`: the adapter that describes its branch as a :class:`Branch`, and what the
stability bound (:mod:`tscnet.analysis.lipschitz`) needs to know about it. Blocks are keyed by
qualified class name, so timm and torchvision are only imported when the user builds one of their
models. Adding a block type is one registration, :func:`register_block` (docs/design.md, "Adding
a block type").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor, nn

from ..errors import InvalidType
from ..registry import Registry, qualname


@dataclass(eq=False)
class Branch:
    """One residual branch ``F`` of a block, the update ``y + Δt ⊙ F(y)``.

    A ResNet block has one branch; a transformer block two (attention and MLP), each its own
    :class:`Branch` with its own step, so the depth D of the depth rules counts residual updates.
    Attribute paths are relative to ``block`` and may be dotted (``"attn.proj"``, ``"block.5"``).

    Attributes:
        block: the residual block.
        last_attr: the branch's last weight layer, an ``nn.Conv2d`` or ``nn.Linear`` (controller
            input: the L2 norm of each output filter or row; fold target when nothing follows it).
        norm_attr: the branch's last BN (fold target), ``None`` if the branch ends in its last layer.
        se_attr: a channel gate between the last BN and the add, or ``None``.
        site: where Δt is applied while training, a key of :data:`tscnet.stepping.sites.SITES`.
        site_attr: the module the site replaces.
        scale_attr: a per-channel scale parameter that ends the branch (LayerScale's ``γ``,
            ConvNeXt's ``gamma``): the fold target, ``Δt ⊙ (γ ⊙ u) = (Δt γ) ⊙ u``; ``None`` if none.
        weight_attrs: the branch's weight tensors in order (the spectral estimate of
            ``summary=l2_sn``); ``None``: the weights of the block's direct ``nn.Conv2d`` children.
        refusal: why steps must not be attached to this block (``None``: they may); the block
            still counts as a residual block with Δt ≡ 1 for analysis.
    """

    block: nn.Module
    last_attr: str
    norm_attr: str | None
    se_attr: str | None = None
    site: str = "norm"
    site_attr: str = ""
    scale_attr: str | None = None
    weight_attrs: tuple[str, ...] | None = None
    refusal: str | None = None

    @property
    def last_layer(self) -> nn.Module:
        return self.block.get_submodule(self.last_attr)

    @property
    def norm(self) -> nn.BatchNorm2d | None:
        return None if self.norm_attr is None else cast(nn.BatchNorm2d, self.block.get_submodule(self.norm_attr))

    @property
    def se(self) -> nn.Module | None:
        return None if self.se_attr is None else getattr(self.block, self.se_attr)

    @property
    def scale(self) -> nn.Parameter | None:
        return None if self.scale_attr is None else self.block.get_parameter(self.scale_attr)

    @property
    def channels(self) -> int:
        layer = self.last_layer
        return layer.out_channels if isinstance(layer, nn.Conv2d) else cast(int, layer.out_features)

    @property
    def site_module(self) -> nn.Module | None:
        parent, _, name = self.site_attr.rpartition(".")
        return getattr(self.block.get_submodule(parent) if parent else self.block, name)

    def set_site(self, module: nn.Module | None) -> None:
        """Put ``module`` where the site goes (replacing the step site or the module it wraps)."""
        parent, _, name = self.site_attr.rpartition(".")
        setattr(self.block.get_submodule(parent) if parent else self.block, name, module)

    def weights(self) -> list[Tensor]:
        """The branch's weight tensors, in order (for ``Σ_j log σ(W_j)``)."""
        if self.weight_attrs is None:
            return [m.weight for m in self.block.children() if isinstance(m, nn.Conv2d)]
        return [self.block.get_parameter(name) for name in self.weight_attrs]


#: An adapter describes a block's residual branch(es): one Branch, or a list (a transformer block's two).
Adapter = Callable[[nn.Module], Branch | list[Branch]]
#: A bound rule splits a block into the Lipschitz segments of the stability bound:
#: ``block_ops(block) -> tscnet.analysis.lipschitz.BlockOps``. Stepping only stores it;
#: :func:`tscnet.analysis.lipschitz.block_ops` calls it.
BoundRule = Callable[[nn.Module], Any]


@dataclass(frozen=True)
class BlockType:
    """Everything tscnet knows about one residual block class, registered once (:func:`register_block`).

    Attributes:
        branches: the :data:`Adapter`: ``branches(block)`` describes the block's residual
            branch(es), where Δt enters and what folding changes.
        block_ops: the :data:`BoundRule` of the stability bound, ``None`` if there is none (yet):
            :func:`tscnet.analysis.lipschitz.register_block_ops` attaches one to a registered type.
        no_bound: why these blocks have no Lipschitz bound at all (the stability bound's error
            says so in one line), ``None`` if that is not known.
    """

    branches: Adapter
    block_ops: BoundRule | None = None
    no_bound: str | None = None


#: The residual block types steps attach to, by qualified class name (``module.Class``).
BLOCK_TYPES: Registry[BlockType] = Registry("residual block type")


def register_block(
    *names: str, block_ops: BoundRule | None = None, no_bound: str | None = None
) -> Callable[[Adapter], Adapter]:
    """Decorator: ``@register_block("module.Class", ...)`` on an :data:`Adapter` makes it describe the
    residual branch(es) of blocks of those classes (:func:`find_branches`), registering a
    :class:`BlockType` under each name in :data:`BLOCK_TYPES`; returns the adapter unchanged.

    Args:
        *names: the block classes, as ``module.Class`` (:func:`tscnet.registry.qualname`).
        block_ops: optionally, how the stability bound splits such a block into segments (a
            :data:`BoundRule` returning :class:`tscnet.analysis.lipschitz.BlockOps`).
        no_bound: optionally, why no Lipschitz bound exists for such blocks (one line).
    """

    def decorator(adapter: Adapter) -> Adapter:
        BLOCK_TYPES.register(*names)(BlockType(adapter, block_ops, no_bound))
        return adapter

    return decorator


def supported_blocks() -> list[str]:
    """The registered block classes (``module.Class``), sorted: the blocks steps attach to."""
    return BLOCK_TYPES.names()


def _post_activation(conv_attr: str, norm_attr: str) -> Adapter:
    def adapter(block: nn.Module) -> Branch:
        if getattr(block, norm_attr) is None:  # a norm-free branch ends in its conv: scale its filters
            return Branch(block, conv_attr, None, site="conv", site_attr=conv_attr)
        return Branch(block, conv_attr, norm_attr, site="norm", site_attr=norm_attr)

    return adapter


def _fixup(conv_attr: str) -> Adapter:
    def adapter(block: nn.Module) -> Branch:
        return Branch(
            block,
            conv_attr,
            None,
            site="conv",
            site_attr=conv_attr,
            refusal=(
                f"cannot attach steps to {type(block).__name__}: a Fixup branch already ends in its own learnable "
                "scalar multiplier (a per-branch step); compare Fixup as a peer with steps 'none', or attach steps "
                "to the norm-free net without Fixup (init 'he')"
            ),
        )

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
        kind = BLOCK_TYPES.get(qualname(module))
        if kind is not None:
            found = kind.branches(module)
            branches.extend(found if isinstance(found, list) else [found])
            return  # a registered block's children are its branch, never more blocks
        if _looks_residual(module) and not any(_looks_residual(c) for c in module.children()):
            unsupported.add(qualname(module))
        for child in module.children():
            visit(child)

    visit(model)
    if unsupported:
        raise InvalidType(
            f"cannot attach steps to block type(s) {', '.join(sorted(unsupported))}: no adapter "
            f"registered (supported: {', '.join(supported_blocks())}); "
            "see tscnet.stepping.branches.register_block"
        )
    if not branches:
        raise InvalidType(
            f"{type(model).__name__} has no residual block of a supported type ({', '.join(supported_blocks())})"
        )
    return branches
