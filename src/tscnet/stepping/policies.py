"""Step policies: how the step sizes Δt_d of all residual blocks are produced.

Every policy computes the steps of *all* blocks in one call (``policy()``, a flat tensor of
``Σ_d C_d`` values), once per forward pass of the model; the sites read them back by block index.

==================  ==========================================================================
``none``            the vanilla model: no policy, no sites, Δt ≡ 1.
``fixed:V``         Δt_d = V > 0 for every block and channel (e.g. the small step of Zhang et al. 2019).
``depth:P``         Δt_d = D^(−P) for every block and channel, D = number of residual blocks
                    (``depth:0.5`` = 1/√D: Stable ResNet, Hayou et al. 2021, Marion et al. 2025;
                    ``depth:1`` = 1/D: the neural-ODE scaling, T = 1). Not trained.
``scalar[:I]``      one free learnable Δt per block, init I (0 allowed: ReZero / SkipInit-like).
``channel[:I]``     a free learnable Δt per block and channel, init I = 1 (LayerScale-like).
``layerscale[:I]``  LayerScale (Touvron et al. 2021): a free learnable Δt per block and channel,
                    init I, by default ε(D) = 0.1 (D ≤ 18), 1e-5 (D ≤ 24), 1e-6 (deeper); no
                    weight decay on Δt, as in timm / CaiT.
``profile:PATH``    Δt frozen at a saved per-block, per-channel profile: a run folder's
                    ``steps.json`` or such a file (transfer a learned profile). Not trained.
``mlp``             Δt_d = Θ(w_d): a controller of the block's own weights, no recurrence (ablation).
``tsc``             Δt_d = Θ(w_d; Δt_1..Δt_{d−1}): the paper's LSTM controller across the blocks.
==================  ==========================================================================

Each name is a :class:`StepPolicy` subclass in :data:`POLICY_CLASSES`, registered with
``@POLICY_CLASSES.register("name")``. The class declares how its string is parsed
(:attr:`~StepPolicy.options`, :attr:`~StepPolicy.positional`) and the facts about the policy that
reports and the trainer read without building a model (:func:`policy_class`):
:attr:`~StepPolicy.learned`, :attr:`~StepPolicy.controller`, :attr:`~StepPolicy.constant` and
:attr:`~StepPolicy.weight_decay`. A policy whose class sets ``weight_decay`` (not ``None``) has its
parameters trained with that weight decay instead of the optimizer's (``layerscale``: 0).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ..errors import InvalidType, InvalidValue
from ..registry import Registry
from .branches import Branch
from .profile import read_profile
from .sites import StepSite, prepare_sites

#: The step policies by name, in registration order (``none``, ``fixed``, ..., ``mlp``, ``tsc``): each
#: a :class:`StepPolicy` subclass, added with ``@POLICY_CLASSES.register("name")`` (or :func:`register_policy`).
POLICY_CLASSES: Registry[type[StepPolicy]] = Registry("step policy")


class StepPolicy(nn.Module):
    """Base class: produces the steps of all D blocks, flat (``Σ_d C_d`` values, block after block).

    Subclasses implement :meth:`forward`. The policy is a child of the first block's step site
    (``<site>.step_policy``). The model's step sites call :meth:`site_args`; the first block's
    call runs the policy and prepares every site's input (one batched op per kind of site), the
    others read theirs back. No Python counter or flag changes between calls, so
    ``torch.compile`` sees the same program every step.
    """

    # Plain lists, not submodules: the blocks and sites belong to the model, not to the policy.
    branches: list[Branch]
    sites: list[StepSite]  # bound by tscnet.stepping.attach
    spec: str  # the policy string it was built from (set when bound)

    def __init__(self, branches: list[Branch]) -> None:
        super().__init__()
        self.__dict__["branches"] = branches
        self.__dict__["sites"] = []
        self.sizes = [b.channels for b in branches]
        self._site_args: list | None = None

    #: Weight decay of this policy's parameters; ``None``: the optimizer's (the regulariser R).
    weight_decay: float | None = None
    #: It has trainable parameters: Δt is trained with the network (``scalar``, ``channel``,
    #: ``layerscale``, ``mlp``, ``tsc``).
    learned: ClassVar[bool] = False
    #: Δt is computed from the network's weights by a controller Θ (``mlp``, ``tsc``).
    controller: ClassVar[bool] = False
    #: Δt is one value for every block and channel, known from the policy string alone: no
    #: parameters, nothing read from a file (``none``, ``fixed``, ``depth``; not ``profile``).
    constant: ClassVar[bool] = False
    #: It puts step sites into the model; ``False`` only for ``none``, which leaves the stock model.
    attaches: ClassVar[bool] = True
    #: The options of the policy string: name → the type (or converter) its string value is parsed with.
    options: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    #: The option a bare ``name:V`` sets (``fixed:0.5`` is ``fixed:value=0.5``); ``None``: none does.
    positional: ClassVar[str | None] = None

    @classmethod
    def build(cls, branches: list[Branch], **options: Any) -> StepPolicy | None:
        """The policy over ``branches`` with the parsed ``options``; ``None``: attach nothing."""
        return cls(branches, **options)

    def forward(self) -> torch.Tensor:
        """The steps of all D blocks, flat (``Σ_d C_d`` values, block after block)."""
        raise NotImplementedError

    def compute(self) -> list[torch.Tensor]:
        """``[Δt_0, ..., Δt_{D-1}]``, one 1-D tensor of ``C_d`` values per block."""
        return list(self().split(self.sizes))

    def __getstate__(self) -> dict:
        # The prepared inputs of the last forward are graph nodes: copies and pickles drop them.
        return {**self.__dict__, "_site_args": None, "_watch": None}  # a copy is not watched

    def site_args(self, index: int, x: Any = None):
        """The forward input of block ``index``'s site; block 0 prepares those of this forward pass.

        ``x`` is the site's own input. When it is a ``torch.fx`` proxy (symbolic tracing, e.g.
        torchvision's ``create_feature_extractor``), the policy enters the graph as one call of
        this module, a leaf, whatever its code: the graph module runs it at every forward.
        """
        if index == 0 or self._site_args is None:
            self._site_args = prepare_sites(self.sites, self._steps(x), self.sizes)
        return self._site_args[index]

    def _steps(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            tracer = cast(torch.fx.Tracer, x.tracer)  # symbolic_trace's tracer class
            # The proxy stands in for the steps tensor while FX traces.
            return cast(torch.Tensor, tracer.create_proxy("call_module", tracer.path_of_module(self), (), {}))
        return self()

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}"


class InitStep(str):
    """A starting step: a number, ``depth:P`` for D^(−P) with D residual updates (branches), or
    ``cait`` for LayerScale's ε of the network's depth in blocks (:func:`layerscale_init`)."""

    description = "number, depth:P or cait"

    def __new__(cls, value) -> InitStep:
        text = str(value).strip()
        if text != "cait":
            float(text[len("depth:") :] if text.startswith("depth:") else text)  # ValueError: not a valid InitStep
        return super().__new__(cls, text)

    def resolve(self, branches: list[Branch]) -> float:
        """The step for a network with these residual ``branches``."""
        if self == "cait":
            return layerscale_init(count_blocks(branches))
        if self.startswith("depth:"):
            return float(len(branches)) ** -float(self[len("depth:") :])
        return float(self)


def init_option(value: Any) -> float | InitStep:
    """A free step's ``init``: a number stays a number, ``depth:P`` and ``cait`` an :class:`InitStep`."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return InitStep(value)


init_option.description = InitStep.description  # type: ignore[attr-defined]  # read by _convert's error message


def count_blocks(branches: list[Branch]) -> int:
    """Residual blocks, as LayerScale's depth rule counts them: a transformer block's two branches are one block."""
    return len({id(b.block) for b in branches})


@POLICY_CLASSES.register("none")
class NoSteps(StepPolicy):
    """``none``: the vanilla model, Δt ≡ 1. Nothing is attached (:meth:`build` gives ``None``, so no
    sites and no policy); the class states the facts of ``none``."""

    constant = True
    attaches = False

    @classmethod
    def build(cls, branches: list[Branch], **options: Any) -> None:
        """``None``: the vanilla model has no steps to build."""
        return None


@POLICY_CLASSES.register("fixed")
class FixedSteps(StepPolicy):
    """Δt_d ≡ ``value`` (a constant, not trained)."""

    constant = True
    positional = "value"
    options = {"value": float}
    dt: torch.Tensor  # buffer

    def __init__(self, branches: list[Branch], value: float = 1.0) -> None:
        super().__init__(branches)
        if not (value > 0 and math.isfinite(value)):  # also refuses NaN
            raise InvalidValue(
                f"fixed step must be a positive finite number, got {value}: Δt = 0 switches every residual "
                "branch off and Δt < 0 runs the ODE backwards in time (for a learnable step that may "
                "start at 0, use scalar:0)"
            )
        self.value = float(value)
        self.register_buffer("dt", torch.full((sum(self.sizes),), self.value), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.dt

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, value={self.value}"


class FreeSteps(StepPolicy):
    """Free learnable steps: one per block (``per_channel=False``) or one per block and channel."""

    learned = True
    block_of_channel: torch.Tensor  # buffer

    def __init__(self, branches: list[Branch], init: float | str = 1.0, per_channel: bool = True) -> None:
        super().__init__(branches)
        self.per_channel = per_channel
        n = sum(self.sizes) if per_channel else len(self.sizes)
        start = InitStep(init).resolve(branches)
        if not (start >= 0 and math.isfinite(start)):  # also refuses NaN
            raise InvalidValue(
                f"a learnable step must start at a finite number ≥ 0, got init={init}: Δt < 0 runs the ODE "
                "backwards in time (0 is allowed: ReZero / SkipInit)"
            )
        self.dt = nn.Parameter(torch.full((n,), start))
        block_of_channel = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self.register_buffer("block_of_channel", block_of_channel, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.dt if self.per_channel else self.dt[self.block_of_channel]

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, per_channel={self.per_channel}"


@POLICY_CLASSES.register("scalar")
class ScalarSteps(FreeSteps):
    """``scalar[:I]``: one free learnable Δt per block, init I (0 allowed: ReZero / SkipInit-like)."""

    positional = "init"
    options = {"init": init_option}

    def __init__(self, branches: list[Branch], init: float | str = 1.0) -> None:
        super().__init__(branches, init, per_channel=False)


@POLICY_CLASSES.register("channel")
class ChannelSteps(FreeSteps):
    """``channel[:I]``: a free learnable Δt per block and channel, init I = 1 (LayerScale-like)."""

    positional = "init"
    options = {"init": init_option}

    def __init__(self, branches: list[Branch], init: float | str = 1.0) -> None:
        super().__init__(branches, init, per_channel=True)


@POLICY_CLASSES.register("depth")
class DepthSteps(FixedSteps):
    """``depth:P``: Δt_d ≡ D^(−P) for every block d and channel, D = number of residual blocks.

    ``P = 0.5`` is the 1/√D scaling of Stable ResNet (Hayou et al. 2021) and Marion et al. (JMLR
    2025); ``P = 1`` is the neural-ODE scaling 1/D, evolution time T = Σ_d Δt_d = 1. A constant,
    not trained (a :class:`FixedSteps` whose value follows from the depth): cifar_resnet20 has
    D = 9 blocks, so ``depth:0.5`` is Δt ≡ 1/3 and ``depth:1`` is Δt ≡ 1/9.
    """

    positional = "power"
    options = {"power": float}

    def __init__(self, branches: list[Branch], power: float = 0.5) -> None:
        power = float(power)
        if not math.isfinite(power):
            raise InvalidValue(f"step policy 'depth': the power P of Δt = D^(-P) must be finite, got {power}")
        try:
            value = len(branches) ** -power
        except OverflowError:
            raise InvalidValue(f"step policy 'depth': Δt = D^(-P) is too large for a float with P = {power}") from None
        super().__init__(branches, value)
        self.power = power

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, power={self.power}, value={self.value}"


def layerscale_init(blocks: int) -> float:
    """LayerScale's published initialisation ε for a network of ``blocks`` residual blocks.

    Touvron et al. 2021 (CaiT, "Going deeper with image transformers"): ε = 0.1 for depth up to
    18, 1e-5 for depth 24 and 1e-6 beyond. Their depth counts transformer blocks; we count blocks
    the same way, a ResNet block or a transformer block (whose two residual updates share the
    block's ε): ε = 0.1 for ≤ 18 blocks, 1e-5 for 19–24, 1e-6 for more (cifar_resnet20, 9 blocks:
    0.1; cifar_resnet56, 27 blocks: 1e-6; a ViT of 12 blocks: 0.1, of 24 blocks: 1e-5).
    """
    if blocks <= 18:
        return 0.1
    return 1e-5 if blocks <= 24 else 1e-6


@POLICY_CLASSES.register("layerscale")
class LayerScaleSteps(FreeSteps):
    """``layerscale[:I]``: LayerScale (Touvron et al. 2021): y_{d+1} = y_d + diag(λ_d) F(y_d), i.e.
    Δt_d = λ_d, a free learnable value per block and channel initialised to ε.

    ε = ``init`` if given, else :func:`layerscale_init` of the number of residual blocks D (0.1
    for D ≤ 18, 1e-5 for D ≤ 24, 1e-6 deeper). The only differences from ``channel:ε`` are the
    depth-dependent default and the weight decay: timm's optimizer factory, which DeiT/CaiT's
    training uses, puts every 1-D parameter (LayerScale's ``gamma`` included) in a group without
    weight decay (``weight_decay_exclude_1d``), so these steps train with weight decay 0 while
    the network keeps the recipe's.
    """

    weight_decay = 0.0
    positional = "init"
    options = {"init": float}

    def __init__(self, branches: list[Branch], init: float | None = None) -> None:
        init = layerscale_init(count_blocks(branches)) if init is None else float(init)
        super().__init__(branches, init, per_channel=True)
        self.init = init

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, init={self.init:g}, weight_decay=0"


@POLICY_CLASSES.register("profile")
class ProfileSteps(StepPolicy):
    """``profile:PATH``: Δt_d[c] frozen at a saved profile (a buffer, not trained).

    ``PATH`` is a run folder (its ``steps.json``, written at the end of every ``tscnet train``
    run) or a JSON file of that format: ``{"dt": [[Δt_0[0], ..., Δt_0[C_0 − 1]], ...], ...}``.
    The profile must have one list per residual block of the model and, for block d, C_d values
    (a mismatch is a ValueError naming it). Use it to transfer a learned profile to a new
    training run, or to ask how much of a controller's result its final steps alone explain.
    The profile is a persistent buffer: checkpoints keep the steps they were trained with.
    """

    positional = "path"
    options = {"path": str}
    dt: torch.Tensor  # buffer

    def __init__(self, branches: list[Branch], path: str | None = None) -> None:
        if not path:
            raise InvalidValue("step policy 'profile' needs a path: profile:RUN_FOLDER or profile:FILE.json")
        super().__init__(branches)
        self.path = str(path)
        profile = read_profile(self.path)
        blocks = profile["dt"]
        if len(blocks) != len(self.sizes):
            raise InvalidValue(
                f"step profile {profile['file']} has {len(blocks)} blocks, the model has "
                f"{len(self.sizes)} residual blocks"
            )
        for d, (values, channels) in enumerate(zip(blocks, self.sizes)):
            if len(values) != channels:
                raise InvalidValue(
                    f"step profile {profile['file']}: block {d} has {len(values)} channels, "
                    f"the model's block {d} has {channels}"
                )
        self.register_buffer("dt", torch.tensor([v for values in blocks for v in values], dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.dt

    def extra_repr(self) -> str:
        return f"blocks={len(self.sizes)}, path={self.path!r}"


# ---------------------------------------------------------------------------------------------
# Policy specs: "name[:arg][,key=value...]" strings or config objects.


@dataclass
class PolicySpec:
    """A parsed step policy: ``name`` plus constructor options (``PolicySpec("tsc", {"hidden": 64})``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        cls = POLICY_CLASSES.get(self.name)
        if len(self.options) == 1 and cls is not None and cls.positional in self.options:
            return f"{self.name}:{self.options[cls.positional]}"
        if set(self.options) == {"value"} or set(self.options) == {"init"}:
            return f"{self.name}:{next(iter(self.options.values()))}"
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))


def register_policy(
    name: str,
    factory: Callable[..., StepPolicy | None] | None,
    positional: str | None = None,
    **options: Callable[[Any], Any],
) -> type[StepPolicy]:
    """Make ``name`` a policy string: ``name:key=value,...`` builds ``factory(branches, **options)``.

    The function form of ``@POLICY_CLASSES.register(name)``, for a factory that does not declare its
    own string options. A :class:`StepPolicy` subclass that declares exactly these
    :attr:`~StepPolicy.options` and :attr:`~StepPolicy.positional` is registered as it is; otherwise
    a subclass of it (of :class:`NoSteps` for ``None``, of :class:`StepPolicy` for any other callable)
    that declares them and whose :meth:`~StepPolicy.build` calls ``factory``: the policy built is
    ``factory``'s own object, and the facts (:attr:`~StepPolicy.learned`, ...) are its class's
    (a plain callable's are :class:`StepPolicy`'s defaults: declare them on a class instead).

    Args:
        name: the policy's name in policy strings (``steps="name:..."``).
        factory: ``factory(branches, **options) -> StepPolicy``; ``None``: no steps (``none``).
        positional: the option a bare ``name:V`` sets (``fixed:0.5`` is ``fixed:value=0.5``).
        **options: each option the policy takes -> the type (or converter) its string value is parsed with.

    Returns:
        The registered class (what :func:`policy_class` gives for ``name``).
    """
    if isinstance(factory, type) and issubclass(factory, StepPolicy):
        if factory.options == options and factory.positional == positional:
            return POLICY_CLASSES.register(name)(factory)
        base: type[StepPolicy] = factory
    else:
        base = NoSteps if factory is None else StepPolicy

    def build(cls: type[StepPolicy], /, branches: list[Branch], **kwargs: Any) -> StepPolicy | None:
        return None if factory is None else factory(branches, **kwargs)

    # A subclass per registration: it declares this name's options; the object built is factory's.
    declared = type(
        base.__name__,
        (base,),
        {
            "__module__": base.__module__,
            "__doc__": base.__doc__,
            "options": dict(options),
            "positional": positional,
            "build": classmethod(build),
        },
    )
    return POLICY_CLASSES.register(name)(declared)


def policy_names() -> list[str]:
    """The registered policy names, in registration order (``none``, ``fixed``, ..., ``mlp``, ``tsc``)."""
    return list(POLICY_CLASSES)


def _registered(name: str) -> type[StepPolicy]:
    """The class registered as ``name``; an unknown name is an error with the close matches."""
    if name not in POLICY_CLASSES:
        close = difflib.get_close_matches(name, POLICY_CLASSES, n=3, cutoff=0.3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InvalidValue(f"unknown step policy {name!r}{hint}; valid: {', '.join(POLICY_CLASSES)}")
    return POLICY_CLASSES[name]


def _name_of(spec: str | PolicySpec | dict | None) -> str:
    """The policy name of ``spec``, read as :func:`parse_policy` reads it."""
    if spec is None:
        return "none"
    if isinstance(spec, PolicySpec):
        return spec.name
    if isinstance(spec, dict):
        return str(spec.get("name", "none"))
    if isinstance(spec, str):
        return spec.strip().partition(":")[0]
    raise InvalidType(f"step policy must be a string, dict or PolicySpec, not {type(spec).__name__}")


def policy_class(spec: str | PolicySpec | dict | None) -> type[StepPolicy]:
    """The class of a policy, for its facts without building a model or parsing its options:
    ``policy_class("tsc:dt_init=0.5").controller`` is true, ``policy_class("fixed:0.5").constant``
    too (:attr:`~StepPolicy.learned`, :attr:`~StepPolicy.controller`, :attr:`~StepPolicy.constant`,
    :attr:`~StepPolicy.weight_decay`). ``spec`` as :func:`parse_policy` takes it; an unknown name is
    the same error."""
    return _registered(_name_of(spec))


def is_stock(spec: str | PolicySpec | dict | None) -> bool:
    """Whether the policy leaves the stock model, nothing attached (its class's
    :attr:`~StepPolicy.attaches` is false: ``none``). A name not registered in this process (a
    policy a training script registered itself) is taken to attach steps."""
    cls = POLICY_CLASSES.get(_name_of(spec))
    return cls is not None and not cls.attaches


def _convert(name: str, key: str, value: Any, kind: Callable[[Any], Any]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = getattr(kind, "description", kind.__name__)
        raise InvalidValue(f"step policy {name!r}: option {key}={value!r} is not a valid {what}") from None


def parse_policy(spec: str | PolicySpec | dict | None) -> PolicySpec:
    """Parse ``"tsc"``, ``"fixed:0.1"``, ``"tsc:hidden=64,dt_max=2"``, a dict or a :class:`PolicySpec`."""
    if spec is None:
        return PolicySpec("none")
    if isinstance(spec, PolicySpec):
        name, raw = spec.name, dict(spec.options)
    elif isinstance(spec, dict):
        raw = dict(spec)
        name = str(raw.pop("name", "none"))
    elif isinstance(spec, str):
        name, _, args = spec.strip().partition(":")
        raw = {}
        cls = POLICY_CLASSES.get(name)
        if cls is not None and cls.positional is not None and cls.options == {cls.positional: str}:
            # One string option (a path): the whole argument, which may hold ',' '=' or ':'.
            value = args.strip()
            prefix = f"{cls.positional}="
            value = value[len(prefix) :] if value.startswith(prefix) else value
            args = ""
            if value:
                raw[cls.positional] = value
        for i, item in enumerate(a for a in args.split(",") if a.strip()):
            key, eq, value = item.partition("=")
            if not eq:
                cls = POLICY_CLASSES.get(name)
                if i or cls is None or cls.positional is None:
                    raise InvalidValue(f"step policy {spec!r}: expected key=value, got {item!r}")
                key, value = cls.positional, item
            raw[key.strip()] = value.strip()
    else:
        raise InvalidType(f"step policy must be a string, dict or PolicySpec, not {type(spec).__name__}")
    cls = _registered(name)
    unknown = set(raw) - set(cls.options)
    if unknown:
        valid = ", ".join(cls.options) or "none"
        raise InvalidValue(
            f"step policy {name!r}: unknown option(s) {', '.join(sorted(map(repr, unknown)))} (valid: {valid})"
        )
    return PolicySpec(name, {k: _convert(name, k, v, cls.options[k]) for k, v in raw.items()})


def build_policy(spec: str | PolicySpec | dict, branches: list[Branch]) -> StepPolicy | None:
    """The policy module for ``spec`` over ``branches``, or ``None`` for ``none``."""
    spec = parse_policy(spec)
    return POLICY_CLASSES[spec.name].build(branches, **spec.options)
