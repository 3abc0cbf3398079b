"""Small Vision Transformers and ConvNeXts for 28–32 px images, registered as timm models.

``mini_vit_d{6,12,24}``: timm's ``VisionTransformer``, width 64, 4 heads, MLP ratio 4, patch 7 (a
28 px image is 4 × 4 tokens plus the class token), depth 6, 12 or 24 blocks, no LayerScale
(``init_values=None``: a step policy supplies the branch scale). 32 px inputs work too
(``dynamic_img_size``: the patch grid is padded to whole patches and the position embedding
resampled). ``mini_convnext``: timm's ``ConvNeXt``, stages of 2, 2, 4, 2 blocks of width 32–256,
1×1 stem (maps of 28, 14, 7, 3 px), its default LayerScale 1e-6. Both are built like any timm model
(``timm.create_model("mini_vit_d12", in_chans=1, num_classes=10)``, keyword arguments override),
and ``tscnet.create_model`` / ``tscnet train --model mini_vit_d24`` take them by name.
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer

from ..errors import InvalidValue

MINI_VIT_DEPTHS = (6, 12, 24)
# What timm.create_model adds for models with pretrained weights; these have none.
_FACTORY_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _options(defaults: dict, kwargs: dict) -> dict:
    return {**defaults, **{k: v for k, v in kwargs.items() if k not in _FACTORY_ONLY}}


def mini_vit(depth: int = 12, **kwargs) -> VisionTransformer:
    """A ViT for 28–32 px images: width 64, 4 heads, patch 7, ``depth`` blocks (2 × depth residual updates)."""
    defaults = dict(
        img_size=28,
        patch_size=7,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=depth,
        num_heads=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        init_values=None,
        dynamic_img_size=True,
        dynamic_img_pad=True,
    )
    return VisionTransformer(**_options(defaults, kwargs))


def _register_vit(depth: int) -> None:
    def entrypoint(pretrained: bool = False, **kwargs) -> VisionTransformer:
        if pretrained:
            raise InvalidValue(f"mini_vit_d{depth} has no pretrained weights")
        return mini_vit(depth, **kwargs)

    entrypoint.__name__ = f"mini_vit_d{depth}"
    entrypoint.__doc__ = (
        f"ViT width 64, patch 7, {depth} blocks (D = {2 * depth} residual updates), for 28–32 px images."
    )
    entrypoint.__module__ = __name__
    register_model(entrypoint)


for _depth in MINI_VIT_DEPTHS:
    _register_vit(_depth)


@register_model
def mini_convnext(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt for 28–32 px images: stages of 2, 2, 4, 2 blocks, widths 32–256, 1×1 stem (28, 14, 7, 3 px maps at 28 px)."""
    if pretrained:
        raise InvalidValue("mini_convnext has no pretrained weights")
    defaults = dict(in_chans=1, num_classes=10, depths=(2, 2, 4, 2), dims=(32, 64, 128, 256), patch_size=1)
    return ConvNeXt(**_options(defaults, kwargs))
