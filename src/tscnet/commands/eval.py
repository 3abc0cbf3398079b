"""``tscnet eval``: test accuracy of the folded model, and a check that folding changed nothing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: `tscnet --help` imports this module without it
    import torch

NAME = "eval"
HELP = "evaluate a run or checkpoint: top-1/top-5 of the folded model, folded vs unfolded agreement"

# Largest relative logit difference ||folded - unfolded|| / ||unfolded|| that still counts as "folding
# changed nothing", by the precision the float32 convolutions run in.
#
# fp32 (CPU, or CUDA with TF32 off): both models do the same IEEE float32 arithmetic up to the order of
# a few products, measured <= 1e-6 (tests/test_fold.py asserts 1e-5); 1e-4 leaves room for depth.
#
# TF32 (CUDA with cuDNN's default ``allow_tf32``, or TF32 matmuls): tensor cores round every conv/matmul
# operand to a 10-bit mantissa, a relative error up to 2^-11 ~ 4.9e-4 per operand. Folding changes some
# operands (SE blocks: the gate's first FC gets its input columns divided by dt), so the two models round
# differently: emulated on CPU (operands of every conv rounded to TF32) seresnet18/50 with random steps
# differ by 2.8e-4 / 3.5e-4, and ~4e-4 on real SE models. 5e-3 is ~10x that, still far below what a
# fold error does (a step left out changes the logits by O(|dt - 1|)).
FP32_TOLERANCE = 1e-4
TF32_TOLERANCE = 5e-3


def _first_set(*values: str | None) -> str | None:
    """The first precision that is not ``none`` (``none`` inherits from the next, coarser setting)."""
    return next((v for v in values if v not in (None, "none")), None)


def cuda_tf32_flags() -> tuple[bool, bool]:
    """``(conv, matmul)``: whether CUDA float32 convolutions (cuDNN) and matmuls may use TF32 now.

    Reads torch's ``fp32_precision`` settings (torch >= 2.9) where they exist, else the legacy
    ``allow_tf32`` flags (reading those raises once the two APIs were mixed).
    """
    import torch

    b = torch.backends
    conv_node = getattr(getattr(b.cudnn, "conv", None), "fp32_precision", None)
    if conv_node is None:
        return bool(b.cudnn.allow_tf32), bool(b.cuda.matmul.allow_tf32)
    glob = getattr(b, "fp32_precision", None)
    conv = _first_set(conv_node, getattr(b.cudnn, "fp32_precision", None), glob) == "tf32"
    matmul = _first_set(getattr(b.cuda.matmul, "fp32_precision", None), glob)
    if matmul is None:
        matmul = "tf32" if torch.get_float32_matmul_precision() != "highest" else "ieee"
    return conv, matmul == "tf32"


def fold_tolerance(device, conv_tf32: bool | None = None, matmul_tf32: bool | None = None) -> tuple[float, str]:
    """``(tolerance, reason)`` for the folded-vs-unfolded check of a model evaluated on ``device``.

    ``conv_tf32`` / ``matmul_tf32`` default to the current torch settings (:func:`cuda_tf32_flags`);
    they only matter on CUDA (CPU float32 convolutions and matmuls are IEEE fp32).
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return FP32_TOLERANCE, f"fp32 on {device.type}"
    if conv_tf32 is None or matmul_tf32 is None:
        current = cuda_tf32_flags()
        conv_tf32 = current[0] if conv_tf32 is None else conv_tf32
        matmul_tf32 = current[1] if matmul_tf32 is None else matmul_tf32
    ops = [name for name, on in (("convolutions", conv_tf32), ("matmuls", matmul_tf32)) if on]
    if not ops:
        return FP32_TOLERANCE, "fp32 on cuda (TF32 off)"
    return TF32_TOLERANCE, f"TF32 {' and '.join(ops)} on cuda (10-bit mantissa)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="CKPT_OR_RUN", help="run folder or checkpoint.pt")
    parser.add_argument("--data-dir", help="dataset folder (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per evaluation batch (default 500)")
    parser.add_argument("--test-subset", type=int, help="default: the run's")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _logits(model, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` of ``model`` over ``loader``, on the CPU."""
    import torch

    outs, targets = [], []
    with torch.no_grad():
        for images, target in loader:
            outs.append(model(images.to(device)).float().cpu())
            targets.append(target.cpu())
    return torch.cat(outs), torch.cat(targets)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import create_test_loader
    from ..errors import UserError
    from ..stepping import fold_steps, is_stock
    from ..stepping import get_policy as tscnet_policy
    from ..train.metrics import MetricSums
    from .common import check_device, load_model

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.test_subset is not None and args.test_subset < 1:
        raise UserError(f"--test-subset must be a positive integer, got {args.test_subset}")
    check_device(args.device)
    model, config = load_model(args.source, args.device, folded_ok=True)
    can_check = tscnet_policy(model) is not None or is_stock(config["model"]["steps"])
    dc = config["data"]
    subset = args.test_subset if args.test_subset is not None else dc.get("test_subset")
    test_loader, _ = create_test_loader(
        dc["name"],
        args.data_dir or dc["data_dir"],
        batch_size=args.batch_size,
        device=args.device,
        image_size=dc.get("image_size"),
        test_subset=subset,
        workers=dc.get("workers", 4),
    )
    folded = fold_steps(model).eval()
    logits, target = _logits(folded, test_loader, args.device)
    # Without checkpoint.pt only the folded model exists: accuracy yes, the fold check no.
    reference = _logits(model, test_loader, args.device)[0] if can_check else logits
    sums = MetricSums(torch.device("cpu"))
    sums.update(logits, target, torch.nn.functional.cross_entropy(logits, target))
    result: dict[str, Any] = sums.compute("test_")  # more keys below, of other types
    result.update(
        test_error=100.0 - result["test_top1"],
        images=int(target.numel()),
        fold_max_abs_diff=float((logits - reference).abs().max()),
        fold_rel_diff=float((logits - reference).norm() / reference.norm()),
        fold_prediction_agreement=float((logits.argmax(1) == reference.argmax(1)).double().mean() * 100),
        model=config["model"]["name"],
        steps=str(config["model"]["steps"]),
        data=dc["name"],
    )
    tolerance, precision = fold_tolerance(args.device)
    result.update(
        fold_tolerance=tolerance,
        fold_precision=precision,
        fold_ok=result["fold_rel_diff"] < tolerance,
        fold_checked=can_check,
    )
    if not can_check:
        result.update(fold_max_abs_diff=None, fold_rel_diff=None, fold_prediction_agreement=None, fold_ok=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['model']} steps={result['steps']} on {result['data']} ({result['images']} test images), folded model:"
        )
        print(
            f"  top-1 {result['test_top1']:.2f}%  top-5 {result['test_top5']:.2f}%  error {result['test_error']:.2f}%  "
            f"loss {result['test_loss']:.4f}"
        )
        if not can_check:
            print("  fold check skipped: the run has no checkpoint.pt, only the folded model.safetensors")
        else:
            print(
                f"  folded vs unfolded: max |Δlogit| {result['fold_max_abs_diff']:.2e}, "
                f"relative {result['fold_rel_diff']:.2e}, same prediction on "
                f"{result['fold_prediction_agreement']:.2f}% of images"
            )
            print(
                f"  fold check {'ok' if result['fold_ok'] else 'FAILED'}: relative {result['fold_rel_diff']:.2e} "
                f"{'<' if result['fold_ok'] else '>='} tolerance {tolerance:.0e} ({precision})"
            )
    if not result["fold_ok"]:
        print(
            f"tscnet eval: error: folded and unfolded models differ by {result['fold_rel_diff']:.2e} (relative), "
            f"above the {tolerance:.0e} tolerance of {precision}",
            file=sys.stderr,
        )
    return 0 if result["fold_ok"] else 1
