"""Residual branches that end in a Linear: Vision Transformers and ConvNeXts (timm and torchvision).

A transformer block makes two residual updates, ``x + ls1(attn(norm1 x))`` and
``x + ls2(mlp(norm2 x))``, so it has two :class:`~tscnet.stepping.branches.Branch` es, each with its
own step (D counts residual updates: 2 × blocks). A ConvNeXt block has one. Every branch ends in
a Linear with a bias (or a 1×1 conv), optionally followed by a per-channel scale (LayerScale ``γ``,
CaiT's ``gamma_1``/``gamma_2``, ConvNeXt's ``gamma``, torchvision's ``layer_scale``), then DropPath:

* **while training** Δt multiplies the last Linear's rows and bias (:class:`~.sites.StepLinear`),
  ``Δt ⊙ (W u + b)``; the scale and DropPath act per channel, so this is ``Δt`` on the branch's
  output before DropPath. torchvision's ``nn.MultiheadAttention`` applies ``out_proj`` without
  calling it, so there the step is an explicit ``x·Δt`` in the block's ``dropout`` slot;
* **folding** multiplies Δt into the per-channel scale where the block has one
  (``γ ← Δt γ``), else into the last Linear's rows and bias: exact, stock keys kept;
* **the controller** reads the L2 norm of each output row of the last Linear (the analogue of
  the conv filter norms), and ``summary=l2_sn`` the spectral norms of the branch's Linears.

The blocks: timm's ViT ``Block``, ``RelPosBlock`` and SAM's ``Block``, CaiT's two block kinds,
BEiT's ``Block``, ``EvaBlock``, ``SwinTransformerBlock``, the PVT v2, Twins and ConViT ``Block`` s,
``FocalNetBlock``, InceptionNeXt's ``MetaNeXtBlock`` and ``ConvNeXtBlock``; torchvision's
``EncoderBlock`` and ``CNBlock``. Blocks with other residual structure (post-norm ``ResPostBlock``
and Swin V2, parallel blocks, torchvision's Swin, whose attention applies ``proj``'s weights
without calling it and whose two branches share one stochastic-depth module, ...) have no adapter
and are refused by name. None of these blocks has a stability bound; ``no_bound`` says why for
each (attention, LayerNorm, focal modulation, an inception token mixer).
"""

from __future__ import annotations

from typing import cast

from torch import nn

from .branches import Branch, register_block

_ATTENTION = (
    "self-attention has no global Lipschitz constant (its Jacobian grows with the input, "
    "Kim et al. 2021) and LayerNorm divides by a data-dependent scale"
)
_LAYER_NORM = "LayerNorm divides by a data-dependent scale, so the branch has no global Lipschitz constant"
_MODULATION = (
    "focal modulation multiplies two functions of the input (q ⊙ h(context)), so the branch has no "
    "global Lipschitz constant, and LayerNorm divides by a data-dependent scale"
)
_INCEPTION = "tscnet's bound covers conv-BN-ReLU branches; this one holds an inception token mixer and a GELU MLP"


def _weights_under(block: nn.Module, *roots: str) -> tuple[str, ...]:
    """Dotted names of the Linear/Conv2d weights under ``roots`` of ``block``, in module order."""
    names = []
    for root in roots:
        for name, module in block.get_submodule(root).named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                names.append(".".join(p for p in (root, name, "weight") if p))
    return tuple(names)


def _refuse(block: nn.Module, why: str) -> Branch:
    return Branch(block, "", None, site="linear", refusal=f"cannot attach steps to {type(block).__name__}: {why}")


def _linear_site(block: nn.Module, last_attr: str) -> str | None:
    """The site kind for a branch ending in ``last_attr``, or ``None`` if it is neither a Linear nor a 1×1 conv."""
    layer = block.get_submodule(last_attr)
    if type(layer) is nn.Linear:
        return "linear"
    if type(layer) is nn.Conv2d and layer.kernel_size == (1, 1):
        return "conv"
    return None


def _linear_branch(block: nn.Module, last_attr: str, scale_attr: str | None, roots: tuple[str, ...]) -> Branch:
    site = _linear_site(block, last_attr)
    if site is None:
        layer = block.get_submodule(last_attr)
        return _refuse(
            block,
            f"its branch ends in {last_attr} = {type(layer).__name__}, not a Linear or 1x1 conv, "
            "so Δt cannot enter through its output rows",
        )
    return Branch(
        block,
        last_attr,
        None,
        site=site,
        site_attr=last_attr,
        scale_attr=scale_attr,
        weight_attrs=_weights_under(block, *roots),
    )


def _layer_scale(block: nn.Module, attr: str) -> tuple[str | None, str | None]:
    """``(scale parameter path, refusal)`` of timm's ``ls1``/``ls2`` slot: LayerScale, or Identity (none)."""
    module = getattr(block, attr)
    if isinstance(module, nn.Identity):
        return None, None
    gamma = getattr(module, "gamma", None)
    if isinstance(gamma, nn.Parameter) and gamma.dim() == 1:
        return f"{attr}.gamma", None
    return None, f"its {attr} is a {type(module).__name__}, not timm's LayerScale or Identity"


def _has(block: nn.Module, *paths: str) -> str | None:
    for path in paths:
        try:
            block.get_submodule(path)
        except AttributeError:
            return path
    return None


@register_block(
    "timm.models.vision_transformer.Block",
    "timm.models.vision_transformer_relpos.RelPosBlock",
    "timm.models.vision_transformer_sam.Block",
    "timm.models.swin_transformer.SwinTransformerBlock",
    "timm.models.pvt_v2.Block",
    "timm.models.twins.Block",
    "timm.models.convit.Block",
    no_bound=_ATTENTION,
)
def _timm_pre_norm_block(block: nn.Module) -> list[Branch]:
    # x + drop_path(ls1(attn(norm1 x))) and x + drop_path(ls2(mlp(norm2 x))), ls_k timm's
    # LayerScale, Identity, or absent (Swin, PVT v2, Twins, ConViT); both branches end in a Linear
    # followed by dropout only (attn.proj, mlp.fc2). Windowed attention (SAM, Swin V1's shift,
    # partition, merge, crop and unshift) moves and crops tokens only, so Δt on proj's rows is Δt
    # on the branch's output; Swin V2 normalises after the branch and is not this class. PVT v2's
    # and Twins' attention sub-sample keys and values; ConViT's is gated positional or plain.
    missing = _has(block, "attn.proj", "mlp.fc2")
    if missing:
        return [_refuse(block, f"it has no {missing} (the Linear that ends the branch)")]
    branches = []
    for ls, last, root in (("ls1", "attn.proj", "attn"), ("ls2", "mlp.fc2", "mlp")):
        scale, refusal = _layer_scale(block, ls) if hasattr(block, ls) else (None, None)
        branches.append(_refuse(block, refusal) if refusal else _linear_branch(block, last, scale, (root,)))
    return branches


@register_block("timm.models.cait.LayerScaleBlock", "timm.models.cait.LayerScaleBlockClassAttn", no_bound=_ATTENTION)
def _timm_cait_block(block: nn.Module) -> list[Branch]:
    # Both block kinds update their stream as x + drop_path(gamma_k * branch_k(...)); the
    # class-attention blocks update the class token, and count as residual updates too.
    return [
        _linear_branch(block, "attn.proj", "gamma_1", ("attn",)),
        _linear_branch(block, "mlp.fc2", "gamma_2", ("mlp",)),
    ]


@register_block("timm.models.beit.Block", "timm.models.eva.EvaBlock", no_bound=_ATTENTION)
def _timm_beit_block(block: nn.Module) -> list[Branch]:
    # BEiT and EVA: x + drop_path(gamma_k * branch_k(norm_k x)), gamma_k a parameter or None
    # (init_values unset); EVA's MLP (Mlp, GluMlp, SwiGLU) ends in fc2 too.
    return [
        _linear_branch(block, last, gamma if getattr(block, gamma, None) is not None else None, (root,))
        for last, gamma, root in (("attn.proj", "gamma_1", "attn"), ("mlp.fc2", "gamma_2", "mlp"))
    ]


@register_block("timm.models.focalnet.FocalNetBlock", no_bound=_MODULATION)
def _timm_focalnet_block(block: nn.Module) -> list[Branch]:
    # x + drop_path(ls1(modulation(norm1 x))) and x + drop_path(ls2(mlp(norm2 x))) in NCHW: the
    # modulation ends in proj and the MLP in fc2 (1×1 convs), ls1/ls2 LayerScale2d or Identity.
    # use_post_norm puts a norm after each branch (norm1_post): Δt would be normalised away.
    if not isinstance(getattr(block, "norm1_post", nn.Identity()), nn.Identity):
        return [_refuse(block, "it normalises after each branch (use_post_norm), which would undo Δt")]
    branches = []
    for ls, last, root in (("ls1", "modulation.proj", "modulation"), ("ls2", "mlp.fc2", "mlp")):
        scale, refusal = _layer_scale(block, ls)
        branches.append(_refuse(block, refusal) if refusal else _linear_branch(block, last, scale, (root,)))
    return branches


@register_block("timm.models.inception_next.MetaNeXtBlock", no_bound=_INCEPTION)
def _timm_metanext_block(block: nn.Module) -> Branch:
    # InceptionNeXt: x + drop_path(gamma ⊙ mlp(norm(token_mixer x))), mlp a ConvMlp ending in fc2 (1×1 conv).
    missing = _has(block, "mlp.fc2")
    if missing:
        return _refuse(block, f"it has no {missing} (the layer that ends the branch)")
    scale = "gamma" if getattr(block, "gamma", None) is not None else None
    return _linear_branch(block, "mlp.fc2", scale, ("token_mixer", "mlp"))


@register_block("timm.models.convnext.ConvNeXtBlock", no_bound=_LAYER_NORM)
def _timm_convnext_block(block: nn.Module) -> Branch:
    # x = shortcut + drop_path(gamma ⊙ mlp(norm(conv_dw(x)))); ConvNeXt-V2 (GRN) has no gamma.
    scale = "gamma" if getattr(block, "gamma", None) is not None else None
    return _linear_branch(block, "mlp.fc2", scale, ("conv_dw", "mlp"))


@register_block("torchvision.models.convnext.CNBlock", no_bound=_LAYER_NORM)
def _tv_convnext_block(block: nn.Module) -> Branch:
    # result = stochastic_depth(layer_scale ⊙ block(x)) + x, block = [dwconv, permute, LN, fc1, GELU, fc2, permute]
    return _linear_branch(block, "block.5", "layer_scale", ("block",))


@register_block("torchvision.models.vision_transformer.EncoderBlock", no_bound=_ATTENTION)
def _tv_vit_block(block: nn.Module) -> list[Branch]:
    attention = cast(nn.MultiheadAttention, block.self_attention)
    if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
        return [_refuse(block, "its attention has separate q/k/v projections")]
    # nn.MultiheadAttention applies out_proj's weights itself, never calling it: the step goes in
    # the dropout slot that follows it; it folds into out_proj's rows and bias.
    attn = Branch(
        block,
        "self_attention.out_proj",
        None,
        site="token_slot",
        site_attr="dropout",
        weight_attrs=("self_attention.in_proj_weight", "self_attention.out_proj.weight"),
    )
    return [attn, _linear_branch(block, "mlp.3", None, ("mlp",))]
