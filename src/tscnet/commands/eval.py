"""``tscnet eval``: test accuracy of the folded model, and a check that folding changed nothing."""
from __future__ import annotations

import argparse
import json

import torch

NAME = "eval"
HELP = "evaluate a run or checkpoint: top-1/top-5 of the folded model, folded vs unfolded agreement"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="CKPT_OR_RUN", help="run folder or checkpoint.pt")
    parser.add_argument("--data-dir", help="dataset folder (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--test-subset", type=int, help="default: the run's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


@torch.no_grad()
def _logits(model, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    outs, targets = [], []
    for images, target in loader:
        outs.append(model(images.to(device)).float().cpu())
        targets.append(target.cpu())
    return torch.cat(outs), torch.cat(targets)


def run(args: argparse.Namespace) -> int:
    from ..data import create_test_loader
    from ..stepping import fold_steps
    from ..train.metrics import MetricSums
    from .common import load_model

    model, config = load_model(args.source, args.device)
    dc = config["data"]
    subset = args.test_subset if args.test_subset is not None else dc.get("test_subset")
    test_loader, _ = create_test_loader(dc["name"], args.data_dir or dc["data_dir"], batch_size=args.batch_size,
                                        device=args.device, image_size=dc.get("image_size"), test_subset=subset,
                                        workers=dc.get("workers", 4))
    folded = fold_steps(model).eval()
    logits, target = _logits(folded, test_loader, args.device)
    reference, _ = _logits(model, test_loader, args.device)
    sums = MetricSums(torch.device("cpu"))
    sums.update(logits, target, torch.nn.functional.cross_entropy(logits, target))
    result = sums.compute("test_")
    result.update(
        test_error=100.0 - result["test_top1"], images=int(target.numel()),
        fold_max_abs_diff=float((logits - reference).abs().max()),
        fold_rel_diff=float((logits - reference).norm() / reference.norm()),
        fold_prediction_agreement=float((logits.argmax(1) == reference.argmax(1)).double().mean() * 100),
        model=config["model"]["name"], steps=str(config["model"]["steps"]), data=dc["name"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} steps={result['steps']} on {result['data']} ({result['images']} test images), folded model:")
        print(f"  top-1 {result['test_top1']:.2f}%  top-5 {result['test_top5']:.2f}%  error {result['test_error']:.2f}%  "
              f"loss {result['test_loss']:.4f}")
        print(f"  folded vs unfolded: max |Δlogit| {result['fold_max_abs_diff']:.2e}, relative {result['fold_rel_diff']:.2e}, "
              f"same prediction on {result['fold_prediction_agreement']:.2f}% of images")
    return 0 if result["fold_rel_diff"] < 1e-4 else 1
