"""One entry point for every model: ``create_model(name, num_classes=None, in_chans=None, steps=POLICY, **kwargs)``.

``num_classes`` and ``in_chans`` left at ``None`` take the library's own defaults, and every other
keyword argument goes to the library unchanged (timm's ``pretrained``, ``drop_path_rate``,
``img_size``; torchvision's ``weights``), so a name builds what ``timm.create_model`` or
``torchvision.models.get_model`` would, with the step policy attached. Names:

* ``cifar_resnet20`` ... ``cifar_resnet1202``, ``cifar_preact_resnet164``, ...: ours (:mod:`.cifar_resnet`);
* ``tv:resnet50``, ``tv:resnext50_32x4d``, ...: torchvision's ResNet family, unmodified;
* ``timm:resnet50`` or a bare timm name (``resnet50``, ``seresnet50``, ``vit_small_patch16_224``, ...):
  timm's, unmodified; ``mini_vit_d6/12/24`` and ``mini_convnext`` (:mod:`.mini`) are small timm
  ViTs and ConvNeXts for 28–32 px images.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from ..errors import InvalidValue
from ..registry import Registry
from ..stepping import PolicySpec, attach_steps, is_stock, parse_policy
from . import mini  # noqa: F401  (registers mini_vit_d*, mini_convnext with timm)
from .cifar_resnet import CIFAR_MODELS


class UnknownModelError(KeyError):
    """Raised by a model source for a name it does not know (a ``KeyError``, as the contract had it).

    A class of its own so that a ``KeyError`` from inside the library (torchvision's for an unknown
    ``weights`` name) reaches the caller as the library's error, not as "unknown model".
    """


# prefix -> fn(name, num_classes, in_chans, zero_init, **kw): builds "prefix:name", num_classes and
# in_chans None meaning the library's defaults; raises UnknownModelError if the name is unknown.
_SOURCES: Registry[Callable[..., nn.Module]] = Registry("model source")
#: Decorator: ``@register_source("prefix")`` makes ``create_model("prefix:name")`` call
#: ``fn(name, num_classes, in_chans, zero_init, **kwargs)`` (see the comment above).
register_source = _SOURCES.register


@register_source("tv")
def _torchvision(name: str, num_classes: int | None, in_chans: int | None, zero_init: bool, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name, **kwargs)``: ``weights`` and every other keyword pass through."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UnknownModelError(name)
    if torchvision.models.get_model_builder(name).__module__ == "torchvision.models.resnet":
        kwargs.setdefault("zero_init_residual", zero_init)  # (only its ResNets take it; see _timm)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = torchvision.models.get_model(name, **kwargs)
    if in_chans not in (None, 3):  # torchvision has no in_chans: swap the stem for one of the same shape
        old = getattr(model, "conv1", None)
        if not isinstance(old, nn.Conv2d):
            raise InvalidValue(
                f"in_chans={in_chans}: torchvision's {name} takes 3 channels, and tscnet swaps "
                "the stem (conv1) only of its ResNets"
            )
        model.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)  # type: ignore[arg-type]  # the 2-tuples Conv2d stores, typed tuple[int, ...]
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # (pretrained: re-initialised)
    return model


@register_source("timm")
def _timm(name: str, num_classes: int | None, in_chans: int | None, zero_init: bool, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)``: ``pretrained`` and every other keyword pass through."""
    import timm

    if not timm.is_model(name):
        raise UnknownModelError(name)
    # timm's ResNets zero-initialise the last BN of each branch by default; with steps attached
    # that would make dL/dΔt = 0 at the start, so it is off unless the model is vanilla. Other
    # families (ViT, ConvNeXt) have no such option.
    if timm.models.model_entrypoint(name).__module__ == "timm.models.resnet":
        kwargs.setdefault("zero_init_last", zero_init)
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None:  # None: the model's own default (1000 and 3; mini_vit_*: 10 and 1)
            kwargs[key] = value
    return timm.create_model(name, **kwargs)


def _library_zero_init(name: str, policy: str, norm: str | None, init: str | None) -> bool:
    """timm's ``zero_init_last`` / torchvision's ``zero_init_residual`` for ``init``.

    ``None`` keeps tscnet's default: the library's zero init for the vanilla model only (with steps
    it would make dL/dΔt = 0 at the start); ``"he"`` is γ = 1, ``"zero_last"`` γ = 0. Norm-free
    variants and Fixup exist only for tscnet's own CIFAR nets.
    """
    if norm not in (None, "batch"):
        raise InvalidValue(f"norm {norm!r} is available only for tscnet's CIFAR ResNets, not {name}")
    if init not in _LIBRARY_INITS:
        raise InvalidValue(
            f"init {init!r} is not available for {name}: use one of "
            f"{', '.join(k for k in _LIBRARY_INITS if k)} (fixup is for tscnet's norm-free CIFAR nets)"
        )
    zero = _LIBRARY_INITS[init]
    return is_stock(policy) if zero is None else zero


_LIBRARY_INITS: dict[str | None, bool | None] = {None: None, "he": False, "zero_last": True}


def list_models() -> list[str]:
    """Our model names (timm's and torchvision's are listed by those libraries)."""
    return sorted(CIFAR_MODELS)


def _all_names() -> list[str]:
    names = list(CIFAR_MODELS)
    try:
        import torchvision

        names += [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
        import timm

        names += timm.list_models()
    except ImportError:  # pragma: no cover - both are dependencies
        pass
    return names


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    steps: str | PolicySpec | dict | None = "none",
    **kwargs,
) -> nn.Module:
    """Build model ``name`` with step policy ``steps`` attached.

    ``num_classes`` and ``in_chans`` at ``None`` take the model's own defaults: timm's and
    torchvision's (1000 classes, 3 channels for their ImageNet models; timm's ``mini_vit_*`` 10 and
    1), and 10 and 3 for tscnet's CIFAR nets. Other keyword arguments go to the library unchanged
    (timm: ``pretrained=True``, ``drop_path_rate=0.1``, ``img_size=64``; torchvision:
    ``weights="DEFAULT"``), and one it does not take raises the library's own error. ``steps``
    defaults to ``"none"``, the vanilla model, as a model factory builds the stock model unless
    asked otherwise (:func:`~tscnet.stepping.attach.attach_steps` has no default: its call is the
    choice of a policy). Raises ValueError for unknown names (listing the closest valid ones) and
    policies; TypeError for models whose residual blocks tscnet cannot step.
    """
    spec = parse_policy(steps)
    prefix, sep, rest = name.partition(":")
    if name in CIFAR_MODELS:
        sizes = {
            key: value for key, value in (("num_classes", num_classes), ("in_chans", in_chans)) if value is not None
        }
        model = CIFAR_MODELS[name](**sizes, **kwargs)  # their defaults: 10 classes, 3 channels
    else:
        source, model_name = (prefix, rest) if sep else ("timm", name)
        zero_init = _library_zero_init(name, spec.name, kwargs.pop("norm", None), kwargs.pop("init", None))
        try:
            if source not in _SOURCES:
                raise UnknownModelError(name)
            model = _SOURCES[source](model_name, num_classes, in_chans, zero_init=zero_init, **kwargs)
        except UnknownModelError:  # only the name: a KeyError from inside the library is its own error
            close = difflib.get_close_matches(name, _all_names(), n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise InvalidValue(f"unknown model {name!r}{hint} (ours: {', '.join(list_models())})") from None
    return attach_steps(model, spec)
