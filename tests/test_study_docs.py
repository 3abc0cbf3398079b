"""The studies' numbers quoted in BENCHMARKS.md and docs/results.md are the committed reports' (converged, stability),
and the tables of where the nets start and of SkipInit's branch scale are what their scripts print."""
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "converged"


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:] if end < 0 else text[start:end]


@pytest.mark.parametrize("title", ["### ResNet-20, 5 seeds", "### ResNet-56, 3 seeds"])
def test_benchmarks_tables_of_the_converged_study_are_the_reports(title):
    report = (RESULTS / "report.md").read_text()
    section = _section((ROOT / "BENCHMARKS.md").read_text(), title)
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 13  # 11 policies and 2 ablations
    for row in rows:
        assert row in report.splitlines(), row


@pytest.mark.parametrize("model", ["cifar_resnet20", "cifar_resnet56"])
def test_results_page_of_the_converged_study_is_the_reports(model):
    summary = json.loads((RESULTS / "summary.json").read_text())["models"][model]["rows"]

    def fmt(x):
        return f"{x:+.2f}".replace("-", "−")

    known = {(f"{r['mean']:.2f}", f"{r['std']:.2f}",
              "—" if r["vs_none"] is None else f"{fmt(r['vs_none']['diff'])} [{fmt(r['vs_none']['ci95'][0])}, "
                                                f"{fmt(r['vs_none']['ci95'][1])}]") for r in summary}
    section = _section((ROOT / "docs" / "results.md").read_text(), f"| {model} | error % | vs `none`, pp |")
    section = section.split("\n\n")[0]
    table = re.findall(r"^\| .* \| (\d+\.\d\d) ± (\d+\.\d\d) \| \**([^|*]+?)\** \|$", section, re.M)
    assert len(table) == len(section.splitlines()) - 2 >= 6
    for row in table:
        assert row in known, row


@pytest.mark.parametrize("study, model, intro, arms", [
    ("stability_normfree", "cifar_resnet20", "Norm-free ResNet-20, final-epoch test error %", 10),
    ("stability_normfree", "cifar_resnet56", "Norm-free ResNet-56, complete", 10),
    ("stability_bn", "cifar_resnet56", "BN ResNet-56, final-epoch test error %", 8),
    ("stability_bn", "cifar_resnet110", "BN ResNet-110, final-epoch test error %", 8),
    ("vit_depth", "mini_vit_d6", "ViT of 6 blocks (`mini_vit_d6`, D = 12), final-epoch test error %", 10),
    ("vit_depth", "mini_vit_d12", "ViT of 12 blocks (`mini_vit_d12`, D = 24), final-epoch test error %", 10),
    ("vit_depth", "mini_vit_d24", "ViT of 24 blocks (`mini_vit_d24`, D = 48), final-epoch test error %", 10),
])
def test_benchmarks_tables_of_the_stability_study_are_the_reports(study, model, intro, arms):
    """Each policy × lr cell of BENCHMARKS' stability tables is the report's (the labels may differ:
    BENCHMARKS names the arms for a reader, the report by their spec names; the order is the spec's)."""
    report = (ROOT / "benchmarks" / "results" / study / "report.md").read_text()
    blocks = _section(report, f"## {model}: final test error against `optim.lr`").split("\n\n")
    matrix = next(b for b in blocks if b.startswith("| policy |"))  # the first table: policy × lr
    want = [line.split(" | ")[1:] for line in matrix.splitlines()[2:]]
    text = (ROOT / "BENCHMARKS.md").read_text()
    table = text[text.index(intro):].split("\n\n")[1]
    got = [line.split(" | ")[1:] for line in table.splitlines()[2:]]
    assert len(want) == arms and got == want


def test_benchmarks_depth_transfer_table_and_run_count_are_the_vit_reports():
    report = (ROOT / "benchmarks" / "results" / "vit_depth" / "report.md").read_text()
    text = (ROOT / "BENCHMARKS.md").read_text()
    want = next(b for b in _section(report, "## Depth transfer").split("\n\n") if b.startswith("| policy |"))
    got = text[text.index("Depth transfer (the best learning rate of each arm"):].split("\n\n")[1]
    assert got.strip() == want.strip() and len(got.splitlines()) == 12
    runs = report.splitlines()[0].removeprefix("# Study vit_depth: ").split()[0]
    assert f"**{runs} of 540 runs** committed" in _section(text, "## Deep-ViT study")


def _quoted(text: str) -> float:
    """A number as BENCHMARKS writes it: ``0.118``, ``1.83·10³``."""
    mantissa, _, power = text.strip().partition("·10")
    return float(mantissa) * 10 ** int(power.translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")) or 0)


@pytest.mark.slow
def test_benchmarks_tables_of_the_start_are_what_their_scripts_print():
    """'Why vanilla cannot start at depth 56' and 'Where the BN nets start': logit std and first
    loss at initialisation (seed 0, the first 256 test images), recomputed, to 1 %."""
    import torch

    import tscnet
    from tscnet.data.registry import create_test_loader

    x, y = next(iter(create_test_loader("fashion-mnist", batch_size=256, workers=0)[0]))

    def start(model, steps, norm="batch", init="he"):
        torch.manual_seed(0)
        net = tscnet.create_model(model, num_classes=10, in_chans=1, steps=steps, norm=norm, init=init)
        with torch.no_grad():
            out = net.train()(x.float())
        return out.std().item(), torch.nn.functional.cross_entropy(out, y).item()

    text = (ROOT / "BENCHMARKS.md").read_text()
    checked = 0
    for line in _section(text, "### Why vanilla cannot start at depth 56").splitlines():
        if line.startswith("| `cifar"):
            model, *numbers = [cell.strip(" `") for cell in line.strip("|").split("|")]
            measured = [*start(model, "none", "none"), *start(model, "depth:0.5", "none")]
            assert measured == pytest.approx([_quoted(n) for n in numbers], rel=0.01), (model, measured)
            checked += 1
    columns = [[("none", "he"), ("tsc", "he")], [("none", "zero_last"), ("scalar:0", "he")], [("fixed:0.5", "he")],
               [("depth:0.5", "he"), ("tsc:dt_init=depth:0.5", "he")]]
    for line in _section(text, "### Where the BN nets start").splitlines():
        if line.startswith("| `cifar"):
            model, *cells = [cell.strip(" `") for cell in line.strip("|").split("|")]
            for cell, arms in zip(cells, columns, strict=True):
                std, loss = re.fullmatch(r"std (\S+), loss (\S+)", cell).groups()
                for steps, init in arms if model == "cifar_resnet56" else arms[:1]:  # 'start alike': checked on 56
                    assert start(model, steps, init=init) == pytest.approx((float(std), float(loss)), rel=0.01), (model, steps)
            checked += 1
    assert checked == 4


@pytest.mark.slow
def test_benchmarks_branch_scale_table_is_its_json_and_the_script_reproduces_its_first_steps(tmp_path):
    """'Why SkipInit fails where zero-γ trains': every cell is the committed JSON's, and the script,
    re-run for 4 steps at lr 0.4 and 1.6, gives the same loss and branch scale to 1 %."""
    import subprocess
    import sys

    saved = json.loads((ROOT / "benchmarks" / "results" / "branch_scale.json").read_text())
    section = _section((ROOT / "BENCHMARKS.md").read_text(), "### Why SkipInit fails where zero-γ trains")
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    steps = [int(s) for s in re.findall(r"step (\d+)", rows[0])]
    for row in rows[1:]:
        arm, lr, *cells = [cell.strip() for cell in row.strip("|").split("|")]
        trace = {r["step"]: r for r in saved["traces"][arm.replace("`", "")][lr]}
        for step, cell in zip(steps, cells, strict=True):
            r = trace.get(step)
            want = "NaN" if r is None or r["loss"] is None else f"{r['loss']:.3g} / {r['scale']:.3g}"
            assert cell == want, (arm, lr, step)
    assert len(rows) == 5

    out = tmp_path / "scale.json"
    # 4 steps, not 5: at lr 1.6 SkipInit's scale runs away, and a CPU with other float kernels moves it by
    # 1.6e-4 at step 4 and 1.1 % at step 5 (an Intel Xeon against the machine that wrote the JSON).
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "branch_scale.py"), "--lrs", "0.4", "1.6", "--steps", "4",
                    "--out", str(out)], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    again = json.loads(out.read_text())["traces"]
    for arm, by_lr in again.items():
        for lr in ("0.4", "1.6"):
            for new, old in zip(by_lr[lr], saved["traces"][arm][lr]):
                assert (new["loss"], new["scale"]) == pytest.approx((old["loss"], old["scale"]), rel=0.01), (arm, lr, new["step"])
            assert len(by_lr[lr]) == 4
