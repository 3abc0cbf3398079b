"""``tscnet list WHAT``: the names a command takes — models, step policies, recipes, study specs — one per line."""

from __future__ import annotations

import argparse
from importlib import resources

NAME = "list"
HELP = "list the models, step policies, recipes or study specs tscnet knows by name, one per line"

# One line per policy of tscnet.stepping (the README's table, shortened); tests/test_cli_list.py checks
# that every registered policy has one.
POLICIES = {
    "none": "Δt = 1: the vanilla network, no step modules at all",
    "fixed": "fixed:V, Δt = V > 0 on every block and channel",
    "scalar": "scalar[:INIT], one learned Δt per block (ReZero/SkipInit-like; INIT 0 allowed)",
    "channel": "channel[:INIT], one learned Δt per block and channel (LayerScale-like; INIT 1)",
    "depth": "depth:P, Δt = D^(-P) on every block: depth:0.5 is 1/sqrt(D), depth:1 is 1/D",
    "layerscale": "layerscale[:INIT], LayerScale: learned per channel from eps(D), no weight decay",
    "profile": "profile:PATH, Δt frozen at a saved profile (a run folder's steps.json, or such a file)",
    "mlp": "a controller of each block's own weights (ablation: no recurrence)",
    "tsc": "the paper's LSTM controller across the blocks (tsc:hidden=64,dt_max=2,dt_min=0.01,dt_init=1,...)",
}

MODELS_NOTE = (
    "Also any timm model name (resnet50, seresnet50, vit_small_patch16_224, ...; timm.list_models()) "
    "and torchvision's as tv:NAME (tv:resnet50, ...)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what",
        metavar="WHAT",
        choices=("models", "policies", "recipes", "studies"),
        help="models (for --model), policies (--steps), recipes (train --config) or studies (tscnet study SPEC)",
    )
    parser.add_argument("--names", action="store_true", help="names only, without descriptions or notes (for scripts)")


def models() -> list[tuple[str, str]]:
    """tscnet's own models, then the small timm models it registers, each with its docstring's first line."""
    import timm

    from ..models import CIFAR_MODELS, list_models, mini

    rows = [(name, _first_line(CIFAR_MODELS[name].__doc__)) for name in list_models()]
    minis = [
        name
        for name in timm.list_models(module=mini.__name__.rpartition(".")[2])
        if timm.models.model_entrypoint(name).__module__ == mini.__name__
    ]
    return rows + [(name, _first_line(timm.models.model_entrypoint(name).__doc__)) for name in minis]


def policies() -> list[tuple[str, str]]:
    """Every registered step policy (tscnet.stepping.policy_names) with a one-line description."""
    from ..stepping import policy_names

    return [(name, POLICIES.get(name, "")) for name in policy_names()]


def recipes() -> list[tuple[str, str]]:
    """The recipes in tscnet/configs/, each with its first comment line."""
    return _yaml_files(resources.files("tscnet") / "configs")


def studies() -> list[tuple[str, str]]:
    """The study specs in tscnet/configs/studies/, each with its first comment line."""
    return _yaml_files(resources.files("tscnet") / "configs" / "studies")


def _yaml_files(folder) -> list[tuple[str, str]]:
    """``(name, first comment line)`` of every ``*.yaml`` file directly in ``folder``, by name."""
    rows = []
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.endswith(".yaml"):
            comment = next((line for line in entry.read_text().splitlines() if line.startswith("#")), "")
            rows.append((entry.name[: -len(".yaml")], comment.lstrip("#").strip()))
    return sorted(rows)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def run(args: argparse.Namespace) -> int:
    rows = {"models": models, "policies": policies, "recipes": recipes, "studies": studies}[args.what]()
    width = max((len(name) for name, _ in rows), default=0)
    for name, about in rows:
        print(name if args.names or not about else f"{name:<{width}}  {about}")
    if args.what == "models" and not args.names:
        print(f"\n{MODELS_NOTE}")
    return 0
