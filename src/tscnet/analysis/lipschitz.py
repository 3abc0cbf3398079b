"""The stability bound of docs/design.md (section 2), block by block.

A residual block maps ``y ↦ σ(S y + Δt ⊙ F(y))`` with ``S`` its shortcut, ``F`` its branch and
``σ`` either nothing (pre-activation) or a ReLU after the add (post-activation). ReLU is
1-Lipschitz and ``‖Δt ⊙ u‖ ≤ max_c Δt_c ‖u‖``, so by the triangle inequality

    Lip(block_j) ≤ ‖S_j‖ + L_j · max_c Δt_j[c]                          (the block's factor)
    ‖y_D^ε − y_D‖ ≤ ‖ε‖ · Π_j (‖S_j‖ + L_j · max_c Δt_j[c])               (the bound)

which is the paper's ``Π_j (1 + ‖W_j‖₂ Δt_j)`` for identity shortcuts (``‖S_j‖ = 1``). Here ε is a
perturbation of the input of the first residual block and ``y_D`` the output of the last one.

``L_j`` is an upper bound of the branch's Lipschitz constant: the branch is a chain of affine
segments (a conv with its eval-mode BN folded in, or a BN alone) separated by ReLUs, so
``L_j = Π_segments ‖segment‖₂``, each norm that of the *true* operator on the segment's actual
input shape (:func:`tscnet.analysis.spectral.conv_spectral_norm`; shapes from one forward pass).
Biases and BN shifts do not change a Lipschitz constant. Conv norms come from a registry
(:data:`CONV_NORMS`): ``"power"`` (default) is the operator's own norm by power iteration, which
converges from below; ``"fft"`` is a certified upper bound that is much faster on large maps (see
:func:`conv_norm_fft_upper`): within a few % for stride 1 on maps of 8x8 and more, looser for
strided convs and tiny maps. Shortcut norms:

* identity: 1; option A (stride-s subsampling and zero channel padding): a coordinate selection,
  norm 1; a projection (1x1 conv + BN): the folded conv's norm;
* pre-activation blocks feed ``relu(bn1(y))`` to both paths, so ``‖bn1‖ = max_c |s_c|`` enters both.

Covered blocks: our CIFAR basic/bottleneck blocks, post- and pre-activation; torchvision's and
timm's ``BasicBlock``/``Bottleneck`` with ReLU activations. A block type's bound rule is part of its
registration (:func:`tscnet.stepping.register_block`, ``block_ops=``, or ``no_bound=`` with the
reason none exists); :func:`register_block_ops` attaches one to a type registered without.
Branches with a squeeze-and-excitation (or any other data-dependent) gate are refused:
``u ↦ u ⊙ sigmoid(f(pool(u)))`` has no global Lipschitz constant (its Jacobian contains ``u``
times the gate's derivative, unbounded in ``‖u‖``), so no constant ``L_j`` exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InvalidValue
from ..registry import qualname
from ..stepping import branches_of, evolution_time, step_sizes
from ..stepping.branches import BLOCK_TYPES, BoundRule
from .spectral import bn_scale, conv_spectral_norm, conv_spectral_norm_fft, fold_bn_into_conv

__all__ = [
    "Segment",
    "BlockOps",
    "BlockBound",
    "StabilityBound",
    "CONV_NORMS",
    "block_ops",
    "conv_norm_fft_upper",
    "register_block_ops",
    "segment_norm",
    "stability_bound",
]


@dataclass(frozen=True, eq=False)
class Segment:
    """One affine piece of a block between 1-Lipschitz activations: ``norm(conv(u))``.

    ``conv=None`` is a BN alone (norm ``max_c |γ_c| / sqrt(var_c + eps)``); ``norm=None`` a bare conv.
    """

    conv: nn.Conv2d | None
    norm: _BatchNorm | None = None


@dataclass(frozen=True)
class BlockOps:
    """A block as segments: ``branch`` composes to ``F``; ``shortcut`` to ``S`` (empty: norm 1)."""

    branch: tuple[Segment, ...]
    shortcut: tuple[Segment, ...]
    shortcut_kind: str  # "identity", "subsample-pad" or "projection"


BlockOpsFn = Callable[[nn.Module], BlockOps]


def register_block_ops(*names: str) -> Callable[[BlockOpsFn], BlockOpsFn]:
    """Decorator: ``@register_block_ops("module.Class", ...)`` attaches ``fn(block) -> BlockOps``, which
    splits blocks of those classes into segments, to their registered block types
    (:data:`tscnet.stepping.branches.BLOCK_TYPES`) as the bound rule; returns ``fn`` unchanged.

    For the block types of tscnet's lower layer, whose bound rules live here. A new block type states
    its rule where it is registered: ``register_block("module.Class", block_ops=fn)``.

    Raises:
        ValueError: a class has no registered block type (:func:`tscnet.stepping.register_block` first).
    """

    def decorator(fn: BlockOpsFn) -> BlockOpsFn:
        unknown = [name for name in names if name not in BLOCK_TYPES]
        if unknown:
            raise InvalidValue(
                f"no block type {', '.join(unknown)} to attach a Lipschitz bound to; "
                "register it with tscnet.stepping.register_block (block_ops=...)"
            )
        for name in names:
            BLOCK_TYPES[name] = replace(BLOCK_TYPES[name], block_ops=fn)
        return fn

    return decorator


def block_ops(block: nn.Module) -> BlockOps:
    """The segments of ``block``; raises ValueError for unknown blocks and gated branches."""
    kind = BLOCK_TYPES.get(qualname(block))
    rule: BoundRule | None = None if kind is None else kind.block_ops
    if rule is None and kind is not None and kind.no_bound:
        raise InvalidValue(f"no Lipschitz bound for {type(block).__name__} blocks: {kind.no_bound}")
    if rule is None:
        known = sorted(name for name, k in BLOCK_TYPES.items() if k.block_ops is not None)
        raise InvalidValue(
            f"no Lipschitz bound for block type {qualname(block)} (known: "
            f"{', '.join(known)}); see tscnet.stepping.register_block (block_ops=)"
        )
    return rule(block)


def _projection(shortcut: nn.Module | None) -> tuple[tuple[Segment, ...], str]:
    """Segments of a shortcut module: ``None``, option A, or ``Sequential(conv[, bn])``."""
    if shortcut is None:
        return (), "identity"
    if type(shortcut).__name__ == "ShortcutA":
        return (), "subsample-pad"
    layers = list(shortcut.children()) if isinstance(shortcut, nn.Sequential) else []
    if (
        len(layers) in (1, 2)
        and isinstance(layers[0], nn.Conv2d)
        and (len(layers) == 1 or isinstance(layers[1], _BatchNorm))
    ):
        return (Segment(*layers),), "projection"  # type: ignore[arg-type]  # checked above: a conv, then a BN
    raise InvalidValue(f"no Lipschitz bound for the shortcut {shortcut!r}: expected a conv, optionally with a BN")


def _post_activation(n: int, shortcut_attr: str, acts: Sequence[str] = ()) -> BlockOpsFn:
    """``σ(S y + bn_n(conv_n(…relu(bn_1(conv_1(y))))))``: segments ``(conv_i, bn_i)``."""

    def fn(block: nn.Module) -> BlockOps:
        se = getattr(block, "se", None)
        if se is not None:
            raise InvalidValue(
                f"{qualname(block)} has a {type(se).__name__} gate: u ↦ u·sigmoid(f(pool u)) has no "
                "global Lipschitz constant, so the stability bound is refused"
            )
        for attr in acts:
            act = getattr(block, attr, None)
            if act is not None and not isinstance(act, (nn.ReLU, nn.Identity)):
                raise InvalidValue(
                    f"{qualname(block)}.{attr} is {type(act).__name__}: only ReLU (1-Lipschitz) is supported"
                )
        if not isinstance(getattr(block, "aa", None) or nn.Identity(), nn.Identity):
            raise InvalidValue(f"{qualname(block)} has an anti-aliasing layer: not supported by the bound")
        branch = tuple(Segment(getattr(block, f"conv{i}"), getattr(block, f"bn{i}")) for i in range(1, n + 1))
        return BlockOps(branch, *_projection(getattr(block, shortcut_attr)))

    return fn


def _pre_activation(n: int) -> BlockOpsFn:
    """``y + conv_n(relu(bn_n(…conv_1(relu(bn_1(y))))))``, shortcut on ``relu(bn_1(y))``."""

    def fn(block: nn.Module) -> BlockOps:
        bn1 = cast("_BatchNorm | None", block.bn1)
        pre = () if bn1 is None else (Segment(None, bn1),)  # a norm-free block has no pre-BN
        branch = [*pre] + [Segment(getattr(block, f"conv{i}"), getattr(block, f"bn{i + 1}")) for i in range(1, n)]
        branch.append(Segment(getattr(block, f"conv{n}")))
        projection = cast("nn.Module | None", block.shortcut)
        shortcut, kind = _projection(projection)
        # The shortcut reads the pre-activation too (He et al., "Identity Mappings").
        return BlockOps(tuple(branch), shortcut if projection is None else pre + shortcut, kind)

    return fn


register_block_ops("tscnet.models.cifar_resnet.BasicBlock")(_post_activation(2, "shortcut"))
register_block_ops("tscnet.models.cifar_resnet.Bottleneck")(_post_activation(3, "shortcut"))
register_block_ops("tscnet.models.cifar_resnet.PreActBasicBlock")(_pre_activation(2))
register_block_ops("tscnet.models.cifar_resnet.PreActBottleneck")(_pre_activation(3))
register_block_ops("torchvision.models.resnet.BasicBlock")(_post_activation(2, "downsample", ("relu",)))
register_block_ops("torchvision.models.resnet.Bottleneck")(_post_activation(3, "downsample", ("relu",)))
register_block_ops("timm.models.resnet.BasicBlock")(_post_activation(2, "downsample", ("act1", "act2")))
register_block_ops("timm.models.resnet.Bottleneck")(_post_activation(3, "downsample", ("act1", "act2", "act3")))


@torch.no_grad()
def conv_norm_fft_upper(conv: nn.Conv2d, input_shape: Sequence[int], weight: torch.Tensor) -> float:
    """A certified upper bound of ``‖A‖₂`` for a zero-padded conv of any stride on ``(C, H, W)``.

    ``A = R C E``: ``E`` embeds the input in the zero-padded ``H_p × W_p`` grid (an isometry),
    ``C`` is the stride-1 *circular* convolution on that grid (no valid window wraps around) and
    ``R`` keeps the strided output positions (norm ≤ 1). Hence ``‖A‖₂ ≤ ‖C‖₂``, which the FFT gives
    exactly (:func:`conv_spectral_norm_fft`). Dilated kernels are expanded with zeros first.
    """
    if conv.padding_mode != "zeros":
        raise InvalidValue(f"the FFT bound covers zero padding only, not {conv.padding_mode!r}; use method='power'")
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    (dh, dw), (kh, kw) = conv.dilation, weight.shape[-2:]
    kernel = weight.new_zeros(*weight.shape[:2], (kh - 1) * dh + 1, (kw - 1) * dw + 1)
    kernel[..., ::dh, ::dw] = weight
    return conv_spectral_norm_fft(kernel, (input_shape[1] + top + bottom, input_shape[2] + left + right), conv.groups)


def _power(conv: nn.Conv2d, input_shape: Sequence[int], weight: torch.Tensor, **power: float) -> float:
    return conv_spectral_norm(conv, input_shape, weight=weight, **{**POWER_DEFAULTS, **power})


#: ``method -> fn(conv, (C, H, W), weight, **options)``: the norm of a (BN-folded) conv operator.
CONV_NORMS: dict[str, Callable[..., float]] = {
    "power": _power,
    "fft": lambda conv, shape, weight, **_: conv_norm_fft_upper(conv, shape, weight),
}
# Power iteration converges slowly on conv operators (clustered top singular values); 1e-5 is
# within ~1e-4 of the converged norm at a fraction of the cost of the spectral module's 1e-8.
POWER_DEFAULTS: dict[str, Any] = {"tol": 1e-5, "n_iter": 1000}


@torch.no_grad()
def segment_norm(segment: Segment, input_shape: Sequence[int] | None, method: str = "power", **power: float) -> float:
    """``‖segment‖₂``: ``max_c |s_c|`` for a BN alone, else ``‖A_{W'}‖₂`` of the conv with
    ``W'[o] = s_o W[o]`` (the BN folded in) on inputs of shape ``input_shape = (C, H, W)``."""
    if segment.conv is None:
        return float(bn_scale(cast(_BatchNorm, segment.norm)).abs().max())  # a segment has a conv or a norm
    if method not in CONV_NORMS:
        raise InvalidValue(f"unknown norm method {method!r}; valid: {', '.join(CONV_NORMS)}")
    weight = segment.conv.weight if segment.norm is None else fold_bn_into_conv(segment.conv, segment.norm)[0]
    return CONV_NORMS[method](segment.conv, input_shape, weight.detach(), **power)


@torch.no_grad()
def _conv_input_shapes(model: nn.Module, convs: list[nn.Conv2d], input_shape: Sequence[int]) -> dict[int, tuple]:
    """``id(conv) → (C, H, W)`` of each conv's input, from one eval-mode forward pass."""
    shapes: dict[int, tuple] = {}

    def record(module: nn.Module, args: tuple) -> None:  # returning None keeps the input as is
        shapes[id(module)] = tuple(args[0].shape[1:])

    hooks = [c.register_forward_pre_hook(record) for c in convs]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


@dataclass
class BlockBound:
    """One block's share of the bound (see the module docstring for the equations)."""

    index: int
    name: str  # module path, e.g. "layer2.0"
    shortcut_kind: str
    segment_norms: list[float]
    lipschitz: float  # L_j = Π ‖segment‖₂ (branch, without Δt)
    shortcut_norm: float  # ‖S_j‖
    dt_max: float  # max_c Δt_j[c]
    dt_mean: float
    factor: float  # ‖S_j‖ + L_j · dt_max


@dataclass
class StabilityBound:
    """The bound ``Π_j factor_j`` over all blocks, with ``T`` and the per-block table."""

    blocks: list[BlockBound]
    evolution_time: float
    depth: int = field(default=0)  # stem conv + branch convs + classifier (He et al.'s layer count)
    method: str = "power"  # how conv norms were computed (CONV_NORMS)

    @property
    def log10_bound(self) -> float:
        return sum(math.log10(b.factor) for b in self.blocks)

    @property
    def bound(self) -> float:
        """``Π_j (‖S_j‖ + L_j max_c Δt_j)``; ``inf`` past float64's range (use ``log10_bound``)."""
        return 10.0**self.log10_bound if self.log10_bound < 308 else math.inf

    def rows(self) -> list[dict]:
        return [asdict(b) for b in self.blocks]

    def to_dict(self) -> dict:
        return {
            "bound": self.bound,
            "log10_bound": self.log10_bound,
            "evolution_time": self.evolution_time,
            "depth": self.depth,
            "method": self.method,
            "blocks": self.rows(),
        }


def stability_bound(
    model: nn.Module, input_shape: Sequence[int], method: str = "power", **power: float
) -> StabilityBound:
    """Per-block Lipschitz bounds of ``model`` for inputs of shape ``(C, H, W)``.

    ``method`` picks the conv norm (:data:`CONV_NORMS`); ``power`` goes to
    :func:`conv_spectral_norm` (``tol``, ``n_iter``, ...). Raises ValueError for blocks the bound
    does not cover (gates, unknown block types).
    """
    branches = branches_of(model)
    ops = [block_ops(b.block) for b in branches]
    convs = [s.conv for o in ops for s in (*o.branch, *o.shortcut) if s.conv is not None]
    shapes = _conv_input_shapes(model, convs, input_shape)
    names = {id(m): n for n, m in model.named_modules()}
    norms: dict[int, float] = {}  # a pre-activation BN is shared by branch and shortcut

    def norm(seg: Segment) -> float:
        if id(seg) not in norms:
            norms[id(seg)] = segment_norm(seg, shapes.get(id(seg.conv)), method, **power)
        return norms[id(seg)]

    blocks = []
    for j, (branch, op, dt) in enumerate(zip(branches, ops, step_sizes(model))):
        seg_norms = [norm(s) for s in op.branch]
        lip, short = math.prod(seg_norms), math.prod(norm(s) for s in op.shortcut)
        dt_max = float(dt.max())
        blocks.append(
            BlockBound(
                j,
                names.get(id(branch.block), str(j)),
                op.shortcut_kind,
                seg_norms,
                lip,
                short,
                dt_max,
                float(dt.mean()),
                short + lip * dt_max,
            )
        )
    depth = 2 + sum(s.conv is not None for o in ops for s in o.branch)
    return StabilityBound(blocks, evolution_time(model), depth, method)
