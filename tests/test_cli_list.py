"""``tscnet list models|policies|recipes|studies``: every name a command takes, one per line."""
from __future__ import annotations

import pytest

from tscnet.cli import main
from tscnet.commands import list as list_command


def run_list(capsys, *argv: str) -> list[str]:
    capsys.readouterr()
    assert main(["list", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def names(capsys, what: str) -> list[str]:
    lines = run_list(capsys, what, "--names")
    assert all(line and line == line.strip() and " " not in line for line in lines), lines
    return lines


def test_models_are_ours_and_the_minis_each_buildable(capsys):
    from tscnet.models import list_models

    found = names(capsys, "models")
    assert found == list_models() + ["mini_convnext", "mini_vit_d6", "mini_vit_d12", "mini_vit_d24"]
    lines = run_list(capsys, "models")
    assert any(line.startswith("cifar_resnet20 ") and "CIFAR ResNet-20" in line for line in lines)
    assert any(line.startswith("mini_vit_d12 ") and "12 blocks" in line for line in lines)
    assert "timm" in lines[-1] and "tv:NAME" in lines[-1]  # the note: any timm name, torchvision's as tv:NAME
    import tscnet

    tscnet.create_model(found[-1], num_classes=10, in_chans=1, steps="none")  # a listed name is a model


def test_policies_are_the_registered_ones_each_described(capsys):
    import tscnet

    assert names(capsys, "policies") == tscnet.policy_names()
    assert set(list_command.POLICIES) == set(tscnet.policy_names()), "describe every policy in commands/list.py"
    for line in run_list(capsys, "policies"):
        name, _, about = line.partition(" ")
        assert about.strip(), f"policy {name} has no description"
        tscnet.parse_policy("fixed:0.5" if name == "fixed" else "depth:0.5" if name == "depth"
                            else "profile:x" if name == "profile" else name)


@pytest.mark.parametrize("what", ["recipes", "studies"])
def test_recipes_and_studies_are_the_shipped_files_with_their_first_comment(what, capsys):
    from tscnet.study.spec import STUDY_DIR
    from tscnet.train.config import CONFIG_DIR

    folder = CONFIG_DIR if what == "recipes" else STUDY_DIR
    assert names(capsys, what) == sorted(p.stem for p in folder.glob("*.yaml"))
    lines = run_list(capsys, what)
    name = "fashion_mnist_demo" if what == "recipes" else "converged"
    first = (folder / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ").strip()
    assert f"{name.ljust(max(len(l.split()[0]) for l in lines))}  {first}" in lines


def test_a_listed_recipe_and_study_load_by_that_name(capsys):
    from tscnet.study.spec import load_spec
    from tscnet.train.config import load_config

    assert load_config(names(capsys, "recipes")[0])["model"]["name"]
    assert load_spec(names(capsys, "studies")[0]).name
