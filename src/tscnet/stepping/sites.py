"""Step sites: where Δt_d enters a residual branch ``y + Δt_d ⊙ F(y)`` during training.

Each site replaces one module of the branch *in place* and keeps its parameter names, so the
state dict of the stepped model is the vanilla one plus the policy's parameters, which live in
the first block's site (``<site>.step_policy.*``, see :func:`tscnet.stepping.attach.attach_steps`):

* :class:`StepBatchNorm2d` — the branch's last BN with affine ``(γ·Δt, β·Δt)``:
  ``Δt ⊙ BN_{γ,β}(x) = BN_{γΔt, βΔt}(x)``. C-sized work instead of an N·C·H·W multiply
  (:class:`StepSyncBatchNorm` is the same for ``nn.SyncBatchNorm``, :class:`StepFrozenBatchNorm2d`
  for torchvision's ``FrozenBatchNorm2d`` of pretrained detection backbones).
* :class:`StepConv2d` — the last conv of a pre-activation branch with weight ``W·Δt`` per output
  channel: ``Δt ⊙ (W * x + b) = (ΔtW) * x + Δt b``.
* :class:`StepScale` — an explicit ``x·Δt`` (timm's ``drop_path`` slot, which runs after SE and
  right before the residual add), for branches whose last BN feeds a gate.
* :class:`StepLinear` — the last Linear of a transformer or ConvNeXt branch with weight rows and
  bias ``·Δt``; :class:`StepTokenScale` — ``x·Δt`` on channels-last tokens, where the last
  Linear is not called as a module (torchvision's ``nn.MultiheadAttention``).

Sites hold no parameters of their own. Once per forward pass (when the first block's site runs)
the step policy computes every Δt and, through :meth:`StepSite.prepare` of each site class, every site's
input for all blocks of that class in one multi-tensor op (:mod:`tscnet.stepping.multi_tensor`);
a site then only reads its own.

Under ``torch.fx`` symbolic tracing (torchvision's ``create_feature_extractor``) the policy is one
leaf call, the batched preparation is traced, and a BN site is a leaf module taking its stepped
affine as input, like ``nn.BatchNorm2d`` a leaf whose mode is read when the graph runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidType
from ..registry import Registry, qualname
from .multi_tensor import scale_by_steps

#: Name of the child module of the first block's site that holds the step policy.
POLICY_ATTR = "step_policy"


def _symbolic(x: Any) -> bool:
    """Is ``x`` a ``torch.fx`` proxy (symbolic tracing), whose ``dim()`` or ``dtype`` is no Python value?"""
    return isinstance(x, torch.fx.Proxy)


class StepSite:
    """Mixin: a module that reads its inputs for block ``step_index`` from its policy.

    The site of block 0 owns the policy (registered as its child ``step_policy``): every way of
    taking a network apart that keeps any stepped block keeps the first one, and no container
    calls a site's children, so the policy's parameters stay in ``parameters()`` and nothing
    calls the policy with an input. The other sites hold a plain reference (not a submodule, so
    the parameters are registered once).
    """

    step_index: int
    _modules: dict[str, nn.Module | None]  # nn.Module's, which every site also is

    def bind(self, policy: nn.Module, index: int) -> None:
        self.__dict__["_step_policy"] = policy
        self.step_index = index
        if index == 0:
            self._modules[POLICY_ATTR] = policy
        else:
            self._modules.pop(POLICY_ATTR, None)

    def step_args(self, x: Tensor) -> Any:
        """This site's input for the forward pass of ``x``; block 0's call runs the policy."""
        return self.__dict__["_step_policy"].site_args(self.step_index, x)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling it.
        raise RuntimeError(
            "torch.jit.script cannot compile a model with steps attached (TorchScript is deprecated "
            "upstream); script tscnet.fold_steps(model), the vanilla model, or use torch.export"
        )

    def unwrap(self) -> nn.Module | None:
        """The module this site replaced, sharing its parameters (``None``: the slot was empty)."""
        raise NotImplementedError

    @staticmethod
    def step_views(flat: Tensor, sizes: list[int]) -> Sequence[Tensor]:
        """The flat ``Σ_d C_d`` steps split per block, shaped as this kind of site needs them."""
        return flat.split(sizes)

    @classmethod
    def prepare(cls, sites: list[StepSite], dts: list[Tensor]) -> list[Any]:
        """What each of ``sites`` needs in its forward, given its block's Δt (from :meth:`step_views`)."""
        raise NotImplementedError


def _retype(module: nn.Module | StepSite, cls: Any) -> nn.Module:
    """A module of class ``cls`` sharing ``module``'s parameters, buffers, children and settings."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_step_policy", "step_index")})
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(module.__dict__[key])
    new.__dict__["_modules"].pop(POLICY_ATTR, None)  # a site's policy is bound anew (bind), never inherited
    return new


def _momentum(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """BN's running-average factor for this call, counting the batch (nn.BatchNorm2d.forward's rule)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return momentum


def _batch_norm(
    bn: nn.modules.batchnorm._BatchNorm, x: Tensor, weight: Tensor, bias: Tensor, momentum: float
) -> Tensor:
    """nn.BatchNorm2d.forward with ``(weight, bias)`` as the affine parameters."""
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        weight,
        bias,
        use_batch_stats,
        momentum,
        bn.eps,
    )


class _StepNorm(StepSite):
    """Shared by the BN sites: ``(γ·Δt_d, β·Δt_d)`` for every block in one op.

    ``forward(x)`` reads the stepped affine of this forward pass from the policy;
    ``forward(x, weight, bias)`` takes it as input. The second form is how an FX graph calls the
    site: while ``torch.fx`` traces, a BN site is recorded as a leaf module (as ``nn.BatchNorm2d``
    is) whose stepped affine is an input, so the train/eval mode, the running statistics and
    ``num_batches_tracked`` are those of the module when the graph runs, not when it was traced.
    """

    def _stepped_affine(self, x: Tensor, weight: Tensor | None, bias: Tensor | None):
        """``(γ·Δt, β·Δt)``, or the graph node of this site's call while FX traces (then ``None``)."""
        if weight is not None:
            return weight, bias, None
        weight, bias = self.step_args(x)
        if _symbolic(x):
            proxy = cast(torch.fx.Proxy, x)  # a Proxy while FX traces (_symbolic)
            tracer = cast(torch.fx.Tracer, proxy.tracer)  # symbolic_trace's tracer class
            site = cast(nn.Module, self)  # every site is a module
            return None, None, tracer.create_proxy("call_module", tracer.path_of_module(site), (x, weight, bias), {})
        return weight, bias, None

    plain: type  # the BN class the site stands in for

    @classmethod
    def plain_class(cls) -> type:
        return cls.plain

    @classmethod
    def wrap(cls, bn: nn.Module) -> nn.Module:
        if type(bn) is not cls.plain_class() or not getattr(bn, "affine", True):
            raise TypeError(f"expected an affine {cls.plain_class().__name__}, got {type(bn).__name__}")
        return _retype(bn, cls)

    def unwrap(self) -> nn.Module:
        return _retype(self, self.plain_class())

    @classmethod
    def prepare(cls, sites, dts):
        weights, biases = scale_by_steps(dts, [s.weight for s in sites], [s.bias for s in sites])
        return list(zip(weights, biases))


class StepBatchNorm2d(nn.BatchNorm2d, _StepNorm):
    """BatchNorm2d whose output is scaled channel-wise by Δt through its affine parameters."""

    plain = nn.BatchNorm2d

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        weight, bias, traced = self._stepped_affine(x, weight, bias)
        if traced is not None:
            return traced
        self._check_input_dim(x)
        return _batch_norm(self, x, weight, bias, _momentum(self))


class StepSyncBatchNorm(nn.SyncBatchNorm, _StepNorm):
    """SyncBatchNorm with affine ``(γ·Δt, β·Δt)``; made by :func:`tscnet.stepping.convert_sync_batchnorm`."""

    plain = nn.SyncBatchNorm

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        weight, bias, traced = self._stepped_affine(x, weight, bias)
        if traced is not None:
            return traced
        self._check_input_dim(x)
        momentum = _momentum(self)
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        world = dist.get_world_size(group) if group is not None and self.training else 1
        if world == 1:
            return _batch_norm(self, x, weight, bias, momentum)
        # nn.SyncBatchNorm.forward's synchronised path, with the stepped affine parameters.
        from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm

        return sync_batch_norm.apply(
            x,
            weight,
            bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.eps,
            momentum,
            group,
            world,
        )


class StepFrozenBatchNorm2d(nn.Module, _StepNorm):
    """torchvision's ``FrozenBatchNorm2d`` (statistics and affine held fixed, as buffers) with
    affine ``(γ·Δt, β·Δt)``: ``Δt ⊙ (x·s + b − μ·s) = x·(Δt s) + Δt b − μ·(Δt s)``, ``s = γ/√(σ² + ε)``.

    γ and β stay frozen; Δt trains. Folding multiplies Δt into the frozen γ and β."""

    # FrozenBatchNorm2d's buffers and setting, which the site takes over (_retype)
    weight: Tensor
    running_mean: Tensor
    running_var: Tensor
    eps: float

    @classmethod
    def plain_class(cls) -> type:
        from torchvision.ops.misc import FrozenBatchNorm2d  # imported only for models that have one

        return FrozenBatchNorm2d

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        weight, bias, traced = self._stepped_affine(x, weight, bias)
        if traced is not None:
            return traced
        scale = weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        return x * scale + (bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


_NORM_SITES: Registry[type] = Registry("normalisation step site")
_NORM_SITES.register("torch.nn.modules.batchnorm.BatchNorm2d")(StepBatchNorm2d)
_NORM_SITES.register("torch.nn.modules.batchnorm.SyncBatchNorm")(StepSyncBatchNorm)
_NORM_SITES.register("torchvision.ops.misc.FrozenBatchNorm2d")(StepFrozenBatchNorm2d)


class NormSite:
    """The ``"norm"`` site: the step site class for the branch's last norm layer, by its class."""

    @staticmethod
    def wrap(norm: nn.Module) -> nn.Module:
        site = _NORM_SITES.get(qualname(norm))
        if site is None:
            raise InvalidType(
                f"cannot put a step into the norm layer {qualname(norm)}: steps enter through the "
                f"affine parameters of {', '.join(_NORM_SITES.names())}"
            )
        return site.wrap(norm)


class _LayerSite(StepSite):
    """A site that is the branch's last layer itself, retyped: its parameters keep their names."""

    plain: type  # the layer class the site stands in for

    @classmethod
    def wrap(cls, layer: nn.Module) -> nn.Module:
        if type(layer) is not cls.plain:
            raise TypeError(f"expected an nn.{cls.plain.__name__}, got {type(layer).__name__}")
        return _retype(layer, cls)

    def unwrap(self) -> nn.Module:
        return _retype(self, self.plain)


class StepConv2d(nn.Conv2d, _LayerSite):
    """Conv2d whose output channels are scaled by Δt through its weight (and bias)."""

    plain = nn.Conv2d

    @staticmethod
    def step_views(flat, sizes):
        return flat.view(-1, 1, 1, 1).split(sizes)

    @classmethod
    def prepare(cls, sites, dts):
        (weights,) = scale_by_steps(dts, [s.weight for s in sites])
        # Convs of pre-activation branches have no bias; one that has gets its own multiply.
        biases = [None if s.bias is None else s.bias * dt.view(-1) for s, dt in zip(sites, dts)]
        return list(zip(weights, biases))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, *self.step_args(x))


class StepScale(nn.Module, StepSite):
    """``x ↦ Δt ⊙ drop_path(x)``: an explicit channel-wise scale in an empty slot of the block.

    ``drop_path`` is the module the slot held before (timm's DropPath, or ``None``). Under
    autocast the product is taken in Δt's precision and rounded once, like the folded model's.
    """

    def __init__(self, drop_path: nn.Module | None = None) -> None:
        super().__init__()
        self.drop_path = drop_path

    @classmethod
    def wrap(cls, module: nn.Module | None) -> StepScale:
        return cls(module)

    def unwrap(self) -> nn.Module | None:
        return self.drop_path

    @staticmethod
    def step_views(flat, sizes):
        return flat.view(1, -1, 1, 1).split(sizes, dim=1)

    @classmethod
    def prepare(cls, sites, dts):
        return list(dts)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_path is not None:
            x = self.drop_path(x)
        out = x * self.step_args(x)
        if _symbolic(out):
            return out.to(x.dtype)
        return out if out.dtype == x.dtype else out.to(x.dtype)


class StepLinear(nn.Linear, _LayerSite):
    """Linear whose output features are scaled by Δt through its weight rows and bias:
    ``Δt ⊙ (W x + b) = (diag(Δt) W) x + Δt ⊙ b``. The site of a branch that ends in a Linear
    (a transformer's attention projection and MLP output, ConvNeXt's MLP): C × C_in work per
    step instead of a multiply of every token's activations."""

    plain = nn.Linear

    @staticmethod
    def step_views(flat, sizes):
        # (rows view, vector view) per block: two split ops for all blocks, none per block.
        return list(zip(flat.view(-1, 1).split(sizes), flat.split(sizes)))

    @classmethod
    def prepare(cls, sites, dts):
        (weights,) = scale_by_steps([rows for rows, _ in dts], [s.weight for s in sites])
        biased = [i for i, s in enumerate(sites) if s.bias is not None]
        biases: list[Tensor | None] = [None] * len(sites)
        if biased:
            (scaled,) = scale_by_steps([dts[i][1] for i in biased], [sites[i].bias for i in biased])
            for k, i in enumerate(biased):
                biases[i] = scaled[k]
        return list(zip(weights, biases))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, *self.step_args(x))


class StepTokenScale(StepScale):
    """:class:`StepScale` for channels-last activations (transformer tokens, ``N × L × C``):
    ``x ↦ Δt ⊙ x`` with Δt broadcast over the last dimension. For branches whose last layer is
    not called as a module (``nn.MultiheadAttention`` applies ``out_proj``'s weights itself)."""

    @staticmethod
    def step_views(flat, sizes):
        return flat.split(sizes)


class SiteKind(Protocol):
    """What :data:`SITES` holds: a class whose ``wrap(module)`` gives the step site that replaces ``module``."""

    def wrap(self, module: Any, /) -> nn.Module: ...


#: Site kind (a :class:`~tscnet.stepping.branches.Branch`'s ``site``) -> the class of its step sites.
SITES: dict[str, SiteKind] = {
    "norm": NormSite,
    "conv": StepConv2d,
    "slot": StepScale,
    "linear": StepLinear,
    "token_slot": StepTokenScale,
}


def prepare_sites(sites: list[StepSite], flat: Tensor, sizes: list[int]) -> list[Any]:
    """Every site's forward input from the flat steps: one batched op per kind of site."""
    out: list[Any] = [None] * len(sites)
    kinds: dict[type[StepSite], list[int]] = {}
    for i, site in enumerate(sites):
        kinds.setdefault(type(site), []).append(i)
    for cls, index in kinds.items():
        views = cls.step_views(flat, sizes)
        for i, args in zip(index, cls.prepare([sites[i] for i in index], [views[i] for i in index])):
            out[i] = args
    return out
