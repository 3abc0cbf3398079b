"""Step policies on Vision Transformers and ConvNeXts (timm and torchvision): every policy attaches,
trains, folds exactly into the unmodified class, and the controller reads the branch's Linears."""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import tscnet
from tscnet.analysis import opcount
from tscnet.stepping import find_branches, fold_steps, get_policy
from tscnet.train.optim import build_optimizer

from conftest import sample_batch
from stepping_utils import assert_compiles_like_eager, randomize_steps

POLICIES = ["fixed:0.5", "depth:0.5", "scalar:0.5", "channel", "layerscale", "mlp", "tsc", "tsc:summary=l2_sn",
            "tsc:feedback=explicit"]

# Small members of each family, 32 px inputs, LayerScale (where the block has one) away from its init
# so that folding into it can fail visibly.
FAMILIES = {
    "timm_vit": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=10),
    "timm_vit_layerscale": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3,
                                                     num_classes=10, init_values=0.1),
    "timm_cait": lambda: timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, depth=2, num_classes=10),
    "timm_convnext": lambda: timm.create_model("convnext_atto", num_classes=10),
    "timm_convnextv2": lambda: timm.create_model("convnextv2_atto", num_classes=10),
    "timm_convnext_conv_mlp": lambda: timm.create_model("convnext_atto", num_classes=10, conv_mlp=True),
    "timm_vit_relpos": lambda: timm.create_model("vit_relpos_small_patch16_224", img_size=32, patch_size=8, depth=2,
                                                 embed_dim=32, num_heads=2, num_classes=10, init_values=0.1),
    "timm_beit": lambda: timm.create_model("beit_base_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32,
                                           num_heads=2, num_classes=10, init_values=0.1),
    "timm_eva": lambda: timm.create_model("eva02_tiny_patch14_224", img_size=32, patch_size=8, depth=2, embed_dim=64,
                                          num_heads=2, num_classes=10, init_values=0.1),  # rope, SwiGLU MLP
    "timm_swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=4, window_size=4,
                                           embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=10,
                                           drop_path_rate=0.0),  # its default 0.1 would make runs differ
    "timm_pvt_v2": lambda: timm.create_model("pvt_v2_b0", num_classes=10, depths=(1, 1, 1, 1)),  # spatial-reduction attention
    "timm_twins": lambda: timm.create_model("twins_svt_small", num_classes=10, embed_dims=(16, 32, 64, 128),
                                            depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), wss=(2, 2, 2, 2),
                                            mlp_ratios=(2, 2, 2, 2)),  # locally grouped and sub-sampled attention
    "timm_convit": lambda: timm.create_model("convit_tiny", num_classes=10, img_size=32, patch_size=8, depth=2,
                                             local_up_to_layer=1, embed_dim=32, num_heads=2),  # GPSA, then MHSA
    "timm_focalnet": lambda: timm.models.focalnet.FocalNet(num_classes=10, embed_dim=16, depths=(1, 1, 1, 1),
                                                           layerscale_value=0.1, drop_path_rate=0.0),  # NCHW, 1x1 convs
    "timm_inception_next": lambda: timm.models.inception_next.MetaNeXt(num_classes=10, depths=(1, 1, 2, 1),
                                                                       dims=(16, 32, 64, 128)),  # BN, one branch
    "timm_samvit": lambda: timm.models.vision_transformer_sam.VisionTransformerSAM(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,),
        use_rel_pos=True, num_classes=10, init_values=0.1),  # windowed, then global attention
    "tv_vit": lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                           hidden_dim=32, mlp_dim=64, num_classes=10),
    "tv_convnext": lambda: torchvision.models.ConvNeXt(
        [torchvision.models.convnext.CNBlockConfig(16, 32, 2), torchvision.models.convnext.CNBlockConfig(32, None, 2)],
        num_classes=10),
}
# Residual updates D of each: two per transformer block (CaiT: 2 + 2 class-attention blocks), one per ConvNeXt block.
DEPTHS = {"timm_vit": 6, "timm_vit_layerscale": 6, "timm_cait": 8, "timm_convnext": 12, "timm_convnextv2": 12,
          "timm_convnext_conv_mlp": 12, "timm_vit_relpos": 4, "timm_beit": 4, "timm_eva": 4, "timm_swin": 8,
          "timm_pvt_v2": 8, "timm_twins": 8, "timm_convit": 4, "timm_focalnet": 8, "timm_inception_next": 5, "timm_samvit": 4,
          "tv_vit": 4, "tv_convnext": 4}
QUICK = {"timm_vit_layerscale", "tv_vit", "tv_convnext", "timm_convnextv2"}


def _tiered(names):
    return [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in names]


@torch.no_grad()
def _randomize_scales(model: nn.Module, seed: int = 1) -> None:
    """LayerScale γ (timm ViT, CaiT, ConvNeXt, torchvision CNBlock) at random values in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("gamma", "gamma_1", "gamma_2", "layer_scale"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _build(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[family]()
    _randomize_scales(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # torchvision's ViT zero-initialises its classifier, BEiT and EVA scale theirs by 0.001:
            # outputs that small would hide what the steps change
            if "head" in name and (not p.any() or (p.dim() > 1 and p.abs().max() < 0.01)):
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return sample_batch("cifar10")[:8]


@pytest.mark.parametrize("family", _tiered(list(FAMILIES)))
def test_every_policy_folds_into_the_unmodified_class(family, images, one_thread):
    vanilla = _build(family)
    with torch.no_grad():
        plain_out = vanilla(images)
    for policy in POLICIES:
        stepped = tscnet.attach_steps(copy.deepcopy(vanilla), policy)
        assert len(get_policy(stepped).sizes) == DEPTHS[family], policy
        randomize_steps(stepped)
        with torch.no_grad():
            out = stepped(images)
        assert not torch.allclose(out, plain_out, atol=1e-4), f"{policy}: the steps change nothing"
        folded = fold_steps(stepped)
        fresh = _build(family)
        assert set(fresh.state_dict()) == set(folded.state_dict())
        fresh.load_state_dict(folded.state_dict(), strict=True)  # the unmodified class
        with torch.no_grad():
            torch.testing.assert_close(fresh(images), out, rtol=1e-4, atol=1e-5, msg=f"{family} {policy}")


@pytest.mark.parametrize("family", _tiered(list(FAMILIES)))
def test_learned_steps_and_controllers_train(family, images, one_thread):
    labels = torch.arange(len(images)) % 10
    for policy in ("channel", "tsc"):
        model = tscnet.attach_steps(_build(family).train(), policy)
        opt = build_optimizer(model, {"name": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8,
                                      "weight_decay": 0.05, "weight_decay_rule": "timm"})
        before = {k: v.detach().clone() for k, v in get_policy(model).named_parameters()}
        for _ in range(3):
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = dict(get_policy(model).named_parameters())
        moved = [k for k in before if not torch.equal(before[k], after[k])]
        assert moved, f"{family} {policy}: no step parameter trained"
        assert math.isfinite(loss.item())


def test_layerscale_at_the_end_of_a_branch_takes_the_fold(images, one_thread):
    """With LayerScale, Δt folds into γ (Δt ⊙ (γ ⊙ u) = (Δtγ) ⊙ u) and the Linears stay as they were."""
    stepped = tscnet.attach_steps(_build("timm_vit_layerscale"), "fixed:0.5")
    folded = fold_steps(stepped)
    vanilla = _build("timm_vit_layerscale")
    for name, p in folded.named_parameters():
        want = vanilla.get_parameter(name) * (0.5 if name.endswith(".gamma") else 1.0)
        torch.testing.assert_close(p, want, msg=name)
    # without LayerScale, into the rows and bias of attn.proj and mlp.fc2
    folded = fold_steps(tscnet.attach_steps(_build("timm_vit"), "fixed:0.5"))
    vanilla = _build("timm_vit")
    for name, p in folded.named_parameters():
        scaled = name.split(".")[-2:-1] in (["proj"], ["fc2"]) and name.startswith("blocks.")
        torch.testing.assert_close(p, vanilla.get_parameter(name) * (0.5 if scaled else 1.0), msg=name)


def test_the_controller_reads_the_row_norms_of_each_branchs_last_linear():
    model = tscnet.attach_steps(_build("timm_vit"), "tsc")
    policy = get_policy(model)
    want = torch.cat([blk.attn.proj.weight.norm(dim=1) for blk in model.blocks for _ in (0,)] * 0
                     + [w for blk in model.blocks for w in (blk.attn.proj.weight.norm(dim=1),
                                                             blk.mlp.fc2.weight.norm(dim=1))])
    torch.testing.assert_close(policy.summaries(), want)
    # gradients reach the Linears through the summary (joint training, no detach)
    policy.summaries().sum().backward()
    assert model.blocks[0].attn.proj.weight.grad is not None


def test_the_norm_aware_controller_finds_the_spectral_norms_of_a_branchs_linears(one_thread):
    model = tscnet.attach_steps(_build("tv_vit").train(), "tsc:summary=l2_sn")
    spectral = get_policy(model).spectral
    with torch.no_grad():
        for _ in range(300):
            estimate = spectral()
    true = torch.tensor([sum(math.log(float(torch.linalg.matrix_norm(w.detach(), ord=2))) for w in b.weights())
                         for b in find_branches(_build("tv_vit"))])
    assert [len(b.weights()) for b in get_policy(model).branches] == [2, 2]  * 2  # in_proj + out_proj; fc1 + fc2
    torch.testing.assert_close(estimate, true, atol=2e-3, rtol=0)


def test_a_transformer_block_counts_two_residual_updates_in_the_depth_rules():
    model = tscnet.create_model("mini_vit_d6", num_classes=10, in_chans=1, steps="depth:0.5")
    assert [round(float(dt[0]), 6) for dt in tscnet.step_sizes(model)] == [round(12 ** -0.5, 6)] * 12
    # LayerScale's ε counts blocks, as CaiT does: 0.1 up to 18 blocks, 1e-5 at 24
    for name, eps in (("mini_vit_d12", 0.1), ("mini_vit_d24", 1e-5)):
        for policy in ("layerscale", "tsc:dt_init=cait,dt_min=1e-6"):
            steps = tscnet.step_sizes(tscnet.create_model(name, num_classes=10, in_chans=1, steps=policy))
            assert len(steps) == 2 * int(name.split("_d")[1])
            torch.testing.assert_close(torch.cat(steps), torch.full((sum(map(len, steps)),), eps), rtol=1e-5, atol=0)


@pytest.mark.parametrize("build, block", [
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                               block_fn=timm.models.vision_transformer.ResPostBlock), "ResPostBlock"),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                               block_fn=timm.models.vision_transformer.ParallelScalingBlock), "ParallelScalingBlock"),
    (lambda: timm.create_model("swinv2_tiny_window8_256", img_size=32, patch_size=4, window_size=4, embed_dim=32,
                               depths=(2, 2), num_heads=(2, 4)), "SwinTransformerV2Block"),  # res-post-norm
    (lambda: torchvision.models.swin_t(), "torchvision.models.swin_transformer.SwinTransformerBlock"),
    (lambda: timm.models.focalnet.FocalNet(embed_dim=16, depths=(1, 1, 1, 1), use_post_norm=True),
     "FocalNetBlock: it normalises after each branch"),
])
def test_blocks_that_cannot_be_stepped_exactly_are_refused_by_name(build, block):
    with pytest.raises(TypeError, match=block):
        tscnet.attach_steps(build(), "tsc")


# Extra ops over the vanilla model are a constant plus, for weight-fed controllers, one gradient sum
# per extra read of a weight (as for ResNets): tsc reads each branch's last Linear (1 per branch);
# the norm-aware one also both Linears of the branch for its spectral estimate (2 more).
@pytest.mark.parametrize("policy, sums_per_branch", [("channel", 0), ("tsc", 1), ("tsc:summary=l2_sn", 3)])
def test_controller_op_count_is_independent_of_depth(policy, sums_per_branch, one_thread):
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    extra = []
    for name in ("mini_vit_d6", "mini_vit_d12"):
        torch.manual_seed(0)
        base = opcount.count_train_step(tscnet.create_model(name, num_classes=10, in_chans=1), x, y)["ops"]
        torch.manual_seed(0)
        stepped = tscnet.create_model(name, num_classes=10, in_chans=1, steps=policy)
        extra.append(opcount.count_train_step(stepped, x, y)["ops"] - base)
    assert extra[1] - extra[0] == sums_per_branch * (24 - 12), f"{policy}: {extra[0]} extra ops at 6 blocks, {extra[1]} at 12"


@pytest.mark.slow
@pytest.mark.parametrize("family, policy", [("timm_vit_layerscale", "tsc"), ("tv_vit", "tsc:summary=l2_sn"),
                                            ("timm_convnext", "channel"), ("tv_convnext", "tsc"), ("timm_swin", "tsc"),
                                            ("timm_eva", "channel"), ("timm_twins", "tsc"),
                                            ("timm_focalnet", "tsc"), ("timm_samvit", "layerscale")])
def test_stepped_models_compile_without_graph_breaks_or_recompiles(family, policy, images, one_thread):
    model = tscnet.attach_steps(_build(family).train(), policy)
    labels = torch.arange(len(images)) % 10
    # SGD, not Adam: Adam turns the rounding noise of near-zero gradients into lr-sized updates.
    assert_compiles_like_eager(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), images, labels)


def test_adamw_and_the_weight_decay_rules():
    model = tscnet.create_model("mini_vit_d6", num_classes=10, in_chans=1, steps="tsc")
    cfg = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05}
    opt = build_optimizer(model, {**cfg, "weight_decay_rule": "tscnet"})
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1 and opt.defaults["betas"] == (0.9, 0.95)
    opt = build_optimizer(model, {**cfg, "weight_decay_rule": "timm"})
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    for name, p in names.items():
        exempt = p.ndim <= 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        assert decay_of[id(p)] == (0.0 if exempt else 0.05), name
    policy = tscnet.stepping.policy_name(model)
    assert decay_of[id(names[f"{policy}.out.weight"])] == 0.05  # the controller's 2-D weights are decayed
    # free steps are 1-D: never decayed under timm's rule
    model = tscnet.create_model("mini_vit_d6", num_classes=10, in_chans=1, steps="channel")
    opt = build_optimizer(model, {**cfg, "weight_decay_rule": "timm"})
    dt = get_policy(model).dt
    assert [g["weight_decay"] for g in opt.param_groups if any(p is dt for p in g["params"])] == [0.0]


def test_the_depth_mup_learning_rate():
    cfg = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
           "depth_lr_power": 0.5, "depth_lr_base": 12}
    for name, depth in (("mini_vit_d6", 12), ("mini_vit_d24", 48)):
        model = tscnet.create_model(name, num_classes=10, in_chans=1, steps="depth:0.5")
        assert build_optimizer(model, cfg).param_groups[0]["lr"] == pytest.approx(1e-3 * (depth / 12) ** -0.5)


def test_the_stability_bound_says_why_it_does_not_apply():
    from tscnet.analysis.lipschitz import block_ops

    for family, why in (("timm_vit", "no global Lipschitz constant"), ("tv_convnext", "no global Lipschitz constant"),
                        ("timm_focalnet", "focal modulation multiplies"), ("timm_inception_next", "inception token mixer")):
        block = find_branches(_build(family))[0].block
        with pytest.raises(ValueError, match=why):
            block_ops(block)
