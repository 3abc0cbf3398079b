"""The converged study (issue 10): every step policy against its peers at a budget where networks converge.

Cells are models × policies × seeds, all trained with one recipe (default
``tscnet/configs/fashion_mnist_converged.yaml``); the same seed gives every policy the same initial weights
and batches. Two policies are ablations of a finished run of another policy with the same model
and seed, built from that run's committed results:

* ``profile-of:SRC``: ``profile:<SRC run's results folder>``, its final per-block, per-channel Δt
  frozen from the first step (what the controller learned, without the controller);
* ``fixed-of:SRC``: ``fixed:<T / D of that run>``, a uniform step with the same evolution time
  T = Σ_d mean_c Δt_d (only the smaller total time).

Runs train in a scratch folder (``--runs``, default ``runs/converged``, git-ignored). Each finished
run's small results (``config.yaml``, ``metrics.jsonl``, ``steps.json``, ``model_card.json``, and
``cell.json`` naming the cell; never checkpoints or weights) are copied to
``--results/<model>/<policy tag>/seed<k>/`` (default ``benchmarks/results/converged``). A cell whose
results exist there is skipped, so a fresh clone on a new machine resumes from the git tree; a
cell whose scratch run exists but is unfinished is resumed from its checkpoint. With ``--commit``
each finished run's results folder is committed on its own (``git commit -- <folder>``: nothing
else staged in the repository goes into that commit) as soon as the run ends, and the report at
the end of the invocation; without it nothing is committed.

Order: seed-major (seed 0 of every model and policy, then seed 1, ...), so an interrupted study
has the same seeds for every policy; within a seed the sources of ablations (``tsc``) first, the
ablations as soon as their source's results exist. ``--max-hours H``: no run is started after H
hours, nor one that would end after them by the longest run of its model seen so far; running
runs finish. To stop now, send the runner SIGINT or SIGTERM (Ctrl-C, or ``kill -INT PID`` for a
background runner, its process group works too): it starts no further run and passes the signal on
to the running ``tscnet train`` children, which write a mid-epoch checkpoint and exit; the next
invocation resumes them. A runner killed with SIGKILL leaves its children training (each has its own
process group); let them finish (the next invocation collects finished runs without training them)
before starting the runner again.
A run that diverges (the engine stops it when the loss becomes NaN or infinite) is a result, not a
failure: its config and metrics are committed with ``"diverged"`` in ``cell.json`` and it counts at
chance error (100 − 100 / classes %) in the report, marked †; it is not retried (training is
deterministic: it would diverge again), and its ablations are not run (no final profile). A run
that fails otherwise is reported, not committed; the next invocation resumes it.

Another recipe or data set goes into its own results folder (a results folder holds one recipe;
mixing is refused) and, by default, its own scratch folder ``runs/<name of --results>``. To see
whether the verdict carries over to other data, for example CIFAR-10 from your files:

    python benchmarks/converged.py --set data.name=cifar10 --set data.data_dir=~/data/cifar \
        --results benchmarks/results/converged_cifar10 --models cifar_resnet20 \
        --policies none tsc depth:1 profile-of:tsc fixed-of:tsc --seeds 0 1 2

The report (``report.md``, ``summary.json``, PNGs in ``--results``) is built from the committed
per-run results only: per model, final-epoch test error mean ± std and per seed, T, convergence
(mean over seeds of |err_E − err_{E−3}|), Welch 95 % confidence intervals of each policy's
difference to ``none`` and to the best controller-free peer, and the p-values of the comparisons with
``none`` Holm-adjusted over the model's family of comparisons.

    python benchmarks/converged.py [--commit] [--max-hours H] [--models ...] [--policies ...]
                                   [--seeds ...] [--workers 2 --threads 1] [--report-only] [--dry-run]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from tscnet.errors import UserError
from tscnet.stepping import parse_policy
from tscnet.stepping.profile import read_profile
from tscnet.train import load_config
from tscnet.train.sweep import Job, SweepStop, run_job

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "fashion_mnist_converged"
MODELS = {"cifar_resnet20": [0, 1, 2, 3, 4], "cifar_resnet56": [0, 1, 2]}
POLICIES = ["none", "fixed:0.5", "depth:0.5", "depth:1", "scalar:0", "layerscale", "mlp", "tsc", "tsc:dt_init=0.5",
            "profile-of:tsc", "fixed-of:tsc"]
# The controller-free peers, each at its authors' setting; "best peer" is the best of these by mean.
PEERS = ["none", "fixed:0.5", "depth:0.5", "depth:1", "scalar:0", "layerscale"]
ABLATIONS = ("profile-of", "fixed-of")
CELL_FILE = "cell.json"
RESULT_FILES = ("config.yaml", "metrics.jsonl", "steps.json", "model_card.json")  # copied from the run folder
# Keys that place a run, not define it: a resumed or skipped cell may differ in these.
PLACEMENT = {("data", "data_dir"), ("data", "workers"), ("data", "eval_batch_size"), ("train", "device"),
             ("train", "progress")}


# ---------------------------------------------------------------------------------------------
# Cells


def ablation_source(policy: str) -> Optional[str]:
    """``"tsc"`` for ``"profile-of:tsc"`` and ``"fixed-of:tsc"``; ``None`` for ordinary policies."""
    kind, _, source = policy.partition(":")
    return source if kind in ABLATIONS else None


def policy_tag(policy: str) -> str:
    """The folder name of a policy: ``fixed:0.5`` → ``fixed0.5``, ``profile-of:tsc`` → ``profile-of-tsc``."""
    if ablation_source(policy) is not None:
        kind, _, source = policy.partition(":")
        return f"{kind}-{policy_tag(source)}"
    return policy.replace(":", "").replace(",", "_").replace("=", "").replace("/", "_")


def policy_label(policy: str) -> str:
    source = ablation_source(policy)
    if source is None:
        return policy
    return (f"{source}'s final Δt profile, frozen" if policy.startswith("profile-of")
            else f"fixed Δt = T/D of {source}")


@dataclass(frozen=True)
class Cell:
    model: str
    policy: str  # a step policy, or an ablation "profile-of:SRC" / "fixed-of:SRC"
    seed: int

    @property
    def source(self) -> Optional["Cell"]:
        src = ablation_source(self.policy)
        return None if src is None else Cell(self.model, src, self.seed)

    @property
    def rel(self) -> Path:
        return Path(self.model) / policy_tag(self.policy) / f"seed{self.seed}"

    def __str__(self) -> str:
        return f"{self.model} {self.policy} seed{self.seed}"


def plan(models: list[str], policies: list[str], seeds: Optional[list[int]]) -> list[Cell]:
    """The cells in run order: seed-major; within a seed and model, ablation sources first, ablations last."""
    for policy in policies:
        source = ablation_source(policy)
        if policy.partition(":")[0] in ABLATIONS and not source:
            raise UserError(f"{policy}: name the source run's policy, e.g. {policy.partition(':')[0]}:tsc")
        if source is not None and ablation_source(source) is not None:
            raise UserError(f"{policy}: the source of an ablation must be an ordinary policy")
        try:
            parse_policy(source or policy)  # a typo fails before anything runs
        except ValueError as error:
            raise UserError(str(error)) from None
    sources = {ablation_source(p) for p in policies} - {None}
    ordinary = [p for p in policies if ablation_source(p) is None]
    ordered = ([p for p in ordinary if p in sources] + [p for p in ordinary if p not in sources]
               + [p for p in policies if ablation_source(p) is not None])
    per_model = {m: (seeds if seeds is not None else MODELS.get(m, [0, 1, 2])) for m in models}
    cells = []
    for seed in sorted({s for ss in per_model.values() for s in ss}):
        for model in models:
            if seed in per_model[model]:
                cells += [Cell(model, p, seed) for p in ordered]
    return cells


DIVERGED_FILES = ("config.yaml", "metrics.jsonl")  # a diverged run has no final profile or model card


def _cell_info(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_committed(results: Path, cell: Cell) -> bool:
    folder = results / cell.rel
    info = _cell_info(folder)
    needed = DIVERGED_FILES if info and info.get("diverged") else RESULT_FILES
    return info is not None and all((folder / name).is_file() for name in needed)


def is_diverged(results: Path, cell: Cell) -> bool:
    info = _cell_info(results / cell.rel) if is_committed(results, cell) else None
    return bool(info and info.get("diverged"))


def divergence(log: str) -> Optional[str]:
    """The engine's one-line divergence error in a run's log (``loss became nan ...``), else ``None``."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if "error:" in line and "loss became" in line]
    return errors[-1].split("error:", 1)[1].strip() if errors else None


def _path_for_recipe(folder: Path) -> str:
    """``folder`` relative to the repository root when inside it (runs start there), else absolute."""
    folder = folder.resolve()
    try:
        return str(folder.relative_to(ROOT))
    except ValueError:
        return str(folder)


def cell_state(cell: Cell, runs: Path, results: Path) -> str:
    """``results``, ``trained, not copied``, ``resumable``, ``to run`` or ``waiting for its source``."""
    if is_committed(results, cell):
        return "results"
    job = Job({}, runs / cell.rel)
    if job.finished:
        return "trained, not copied"
    if job.started:
        return "resumable"
    return "to run" if cell.source is None or is_committed(results, cell.source) else "waiting for its source"


def step_spec(cell: Cell, results: Path) -> str:
    """The ``model.steps`` of ``cell``; an ablation's comes from its source's committed results."""
    source = cell.source
    if source is None:
        return cell.policy
    folder = results / source.rel
    if not is_committed(results, source):
        raise UserError(f"{cell}: the results of {source} are not in {results} yet")
    if is_diverged(results, source):
        raise UserError(f"{cell}: its source {source} diverged, so there is no final profile to ablate")
    if cell.policy.startswith("profile-of"):
        return f"profile:{_path_for_recipe(folder)}"
    profile = read_profile(folder)
    return f"fixed:{profile['evolution_time'] / len(profile['dt'])!r}"


def cell_config(cell: Cell, results: Path, recipe: str, overrides: list[str]) -> dict:
    config = load_config(recipe, overrides)
    config["model"].update(name=cell.model, steps=step_spec(cell, results))
    config["train"].update(seed=cell.seed, progress=False)
    return config


def _definition(config: dict, filled: dict) -> dict:
    """``config`` without placement keys; ``model.num_classes``/``in_chans`` as the run filled them in."""
    config = copy.deepcopy(config)
    for section, key in PLACEMENT:
        config.get(section, {}).pop(key, None)
    for key in ("num_classes", "in_chans"):
        if config["model"].get(key) is None:
            config["model"][key] = filled["model"].get(key)
    return config


def config_difference(want: dict, have: dict) -> Optional[str]:
    """``None`` if run config ``have`` defines the same run as ``want``, else the first difference."""
    a, b = _definition(want, have), _definition(have, have)
    for section in sorted(set(a) | set(b)):
        for key in sorted(set(a.get(section, {})) | set(b.get(section, {}))):
            x, y = a.get(section, {}).get(key), b.get(section, {}).get(key)
            if x != y:
                return f"{section}.{key}: {y!r} there, {x!r} in this recipe"
    return None


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# Running


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def git_commit(folders: list[Path], message: str, attempts: int = 5) -> bool:
    """Commit exactly ``folders`` (``git add`` + ``git commit -- folders``) in their repository.

    True when they are committed afterwards, also when there was nothing new to commit."""
    cwd = folders[0]
    while not cwd.is_dir():
        cwd = cwd.parent
    for attempt in range(attempts):
        add = _git(["add", "--", *map(str, folders)], cwd)
        if add.returncode == 0 and _git(["diff", "--cached", "--quiet", "--", *map(str, folders)], cwd).returncode == 0:
            return True  # already committed as they are (e.g. a report rebuilt from unchanged runs)
        done = add.returncode == 0 and _git(["commit", "-q", "-m", message, "--", *map(str, folders)], cwd)
        if done and done.returncode == 0:
            return True
        error = (add.stderr if add.returncode else done.stderr + done.stdout).strip()
        if "index.lock" not in error or attempt + 1 == attempts:  # another git process: wait and retry
            print(f"WARNING: git commit of {', '.join(map(str, folders))} failed: {error}", flush=True)
            return False
        time.sleep(2.0)
    return False


def collect(cell: Cell, run_dir: Path, results: Path, spec: str, diverged: Optional[str] = None) -> Path:
    """Copy the small results of finished (or ``diverged``) run ``run_dir`` to ``results/<cell>``, atomically."""
    final = results / cell.rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for name in (DIVERGED_FILES if diverged else RESULT_FILES):
            if (run_dir / name).is_file() or name != "metrics.jsonl" or not diverged:
                shutil.copy2(run_dir / name, tmp / name)
            else:  # diverged in its first epoch: no epoch finished
                (tmp / name).write_text("")
        cell_info = {"model": cell.model, "policy": cell.policy, "seed": cell.seed, "steps": spec,
                     "source": str(cell.source.rel) if cell.source else None}
        if diverged:
            cell_info["diverged"] = diverged
        (tmp / CELL_FILE).write_text(json.dumps(cell_info, indent=2) + "\n")
        if final.exists():  # a partial copy from a killed runner (no cell.json): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def final_error(folder: Path) -> float:
    lines = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return float(json.loads(lines[-1])["test_error"]) if lines else float("nan")


def check_recipe(cells: list[Cell], results: Path, recipe: str, overrides: list[str]) -> None:
    """Committed results must come from this recipe: refuse to mix recipes in one results folder."""
    for cell in cells:
        if is_committed(results, cell):
            problem = config_difference(cell_config(cell, results, recipe, overrides),
                                        _read_yaml(results / cell.rel / "config.yaml"))
            if problem:
                raise UserError(f"committed results {results / cell.rel} were trained with another recipe "
                                f"({problem}); use another --results folder or remove them")


def run_study(cells: list[Cell], runs: Path, results: Path, recipe: str, overrides: list[str], workers: int = 2,
              threads: int = 1, max_hours: Optional[float] = None, commit: bool = False) -> dict:
    """Train every uncommitted cell (ablations once their source is committed); returns counts."""
    runs, results = runs.resolve(), results.resolve()
    start = time.time()
    deadline = None if max_hours is None else start + 3600.0 * max_hours
    check_recipe(cells, results, recipe, overrides)
    pending = [c for c in cells if not is_committed(results, c)]
    print(f"{len(cells) - len(pending)} of {len(cells)} cells already have results in {results}; "
          f"{len(pending)} to run ({workers} at a time, {threads} thread(s) each)", flush=True)
    running: dict[Future, tuple[Cell, Job, str, float]] = {}
    longest: dict[str, float] = {}
    counts = {"trained": 0, "collected": 0, "diverged": 0, "failed": 0, "stopped": 0,
              "skipped": len(cells) - len(pending)}
    failed: set[Cell] = set()

    def finish(cell: Cell, job: Job, spec: str, diverged: Optional[str] = None) -> None:
        folder = collect(cell, job.out, results, spec, diverged)
        counts["collected"] += 1
        outcome = f"DIVERGED ({diverged})" if diverged else f"final test error {final_error(folder):.2f} %"
        print(f"done: {cell} — {outcome} → {folder}", flush=True)
        if commit:
            what = "diverged" if diverged else f"error {final_error(folder):.2f} %"
            git_commit([folder], f"converged: {cell.model} {cell.policy} seed{cell.seed} ({what})")

    def ready(cell: Cell) -> bool:
        return cell.source is None or is_committed(results, cell.source)

    def fits(cell: Cell) -> bool:
        if deadline is None:
            return True
        return time.time() + longest.get(cell.model, 0.0) <= deadline

    with SweepStop() as stop, ThreadPoolExecutor(max(1, workers)) as pool:
        while True:
            while len(running) < workers and stop.signal is None:
                cell = next((c for c in pending if ready(c) and fits(c)), None)
                if cell is None:
                    break
                pending.remove(cell)
                try:
                    config = cell_config(cell, results, recipe, overrides)
                    job = Job(config, runs / cell.rel)
                    if job.started:
                        problem = config_difference(config, _read_yaml(job.out / "config.yaml"))
                        if problem:
                            raise UserError(f"scratch run {job.out} has another recipe ({problem}); "
                                            "use another --runs folder or delete it")
                except UserError as error:
                    if cell.source is not None and is_diverged(results, cell.source):
                        print(f"not run: {cell}: its source {cell.source} diverged", flush=True)
                        counts["not_run_diverged_source"] = counts.get("not_run_diverged_source", 0) + 1
                        continue
                    print(f"FAILED: {cell}: {error}", flush=True)
                    failed.add(cell)
                    counts["failed"] += 1
                    continue
                spec = config["model"]["steps"]
                if job.finished:  # trained before, not yet copied (e.g. the runner was stopped)
                    finish(cell, job, spec)
                    continue
                print(f"{'resuming' if job.started else 'starting'}: {cell} (steps {spec}) in {job.out}", flush=True)
                running[pool.submit(run_job, job, threads, ROOT, stop)] = (cell, job, spec, time.time())
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                cell, job, spec, began = running.pop(future)
                _, code, log = future.result()
                longest[cell.model] = max(longest.get(cell.model, 0.0), time.time() - began)
                diverged = divergence(log) if code != 0 else None
                if code == 0 and job.finished:
                    counts["trained"] += 1
                    finish(cell, job, spec)
                elif diverged:  # a result: deterministic training would diverge again
                    counts["diverged"] += 1
                    finish(cell, job, spec, diverged)
                elif stop.signal is not None:  # checkpointed (or never started): the next call resumes it
                    counts["stopped"] += 1
                    print(f"stopped: {cell} ({stop.signal}); resumable from {job.out}", flush=True)
                else:
                    failed.add(cell)
                    counts["failed"] += 1
                    print(f"FAILED ({code}): {cell} — see {log}", flush=True)
    waiting = [c for c in pending if not ready(c)]
    for cell in waiting:
        why = "failed" if cell.source in failed else "was not run"
        print(f"not run: {cell}: its source {cell.source} {why}", flush=True)
    late = [c for c in pending if ready(c)]
    if late:
        why = f"stopped by {stop.signal}" if stop.signal else f"--max-hours {max_hours} reached"
        print(f"not started: {len(late)} cells ({why}); run again to continue", flush=True)
    if stop.signal:
        print(f"stopped by {stop.signal}: {counts['stopped']} run(s) checkpointed; run the same command again "
              "to resume them", flush=True)
    counts["not_run"] = len(pending)
    print(f"study: {counts} in {(time.time() - start) / 3600:.2f} h", flush=True)
    return counts


# ---------------------------------------------------------------------------------------------
# Report (from the committed per-run results only)


@dataclass
class Result:
    cell: Cell
    folder: Path
    config: dict
    metrics: list[dict]
    profile: dict  # {} for a diverged run
    card: dict
    diverged: Optional[str] = None  # the engine's message, for a run that diverged

    @property
    def chance(self) -> float:
        return 100.0 - 100.0 / int(self.config["model"]["num_classes"])

    @property
    def errors(self) -> list[float]:
        """Test error per epoch; a diverged run is at chance from the epoch it diverged in to the end."""
        errors = [float(m["test_error"]) for m in self.metrics]
        if self.diverged:
            errors += [self.chance] * (int(self.config["train"]["epochs"]) - len(errors))
        return errors

    @property
    def error(self) -> float:
        return self.errors[-1]


def load_results(results: Path) -> list[Result]:
    """Every committed cell under ``results`` (folders holding ``cell.json`` and the run's files)."""
    found = []
    for marker in sorted(Path(results).glob(f"*/*/seed*/{CELL_FILE}")):
        folder = marker.parent
        info = _cell_info(folder)
        diverged = info.get("diverged") if info else None
        if info is None or not all((folder / name).is_file() for name in (DIVERGED_FILES if diverged else RESULT_FILES)):
            continue
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if not metrics and not diverged:
            continue
        read = (lambda name: {}) if diverged else (lambda name: json.loads((folder / name).read_text()))
        found.append(Result(Cell(info["model"], info["policy"], int(info["seed"])), folder,
                            _read_yaml(folder / "config.yaml"), metrics, read("steps.json"), read("model_card.json"),
                            diverged))
    return found


def welch(a: list[float], b: list[float]) -> Optional[dict]:
    """Welch's t-test of mean(a) − mean(b): the difference, its 95 % CI and the p-value."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return {"diff": diff, "ci95": [diff, diff], "p": 0.0 if diff else 1.0}
    test = stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(0.95)
    return {"diff": diff, "ci95": [float(ci.low), float(ci.high)], "p": float(test.pvalue)}


def paired(a: dict[int, float], b: dict[int, float]) -> Optional[dict]:
    """Paired t-test over the seeds both have (same seed: same initial weights and batches):
    mean_s (a_s − b_s), its 95 % CI and the p-value."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if statistics.stdev(diffs) == 0:
        return {"diff": mean, "ci95": [mean, mean], "p": 0.0 if mean else 1.0, "seeds": seeds}
    test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    ci = test.confidence_interval(0.95)
    return {"diff": mean, "ci95": [float(ci.low), float(ci.high)], "p": float(test.pvalue), "seeds": seeds}


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values. With the m p-values sorted, p_(1) ≤ … ≤ p_(m):
    p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j)); calling every p̃ < α significant keeps the chance of
    any false call among the m at most α (scipy has no Holm; statsmodels would be a dependency for 6 lines)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(pvalues) - rank) * pvalues[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def _group_order(policies: list[str]) -> list[str]:
    known = [p for p in POLICIES if p in policies]
    return known + sorted(p for p in policies if p not in known)


def summarize(found: list[Result]) -> dict:
    """Per model: one row per policy with the statistics of the report."""
    by_model: dict[str, dict[str, list[Result]]] = {}
    for r in found:
        by_model.setdefault(r.cell.model, {}).setdefault(r.cell.policy, []).append(r)
    out = {}
    for model in sorted(by_model, key=lambda m: (list(MODELS).index(m) if m in MODELS else len(MODELS), m)):
        groups = {p: sorted(rs, key=lambda r: r.cell.seed) for p, rs in by_model[model].items()}
        rows = {}
        for policy in _group_order(list(groups)):
            rs = groups[policy]
            errors = [r.error for r in rs]
            drift = [abs(r.errors[-1] - r.errors[-4]) for r in rs if len(r.errors) >= 4 and not r.diverged]
            times = [float(r.profile["evolution_time"]) for r in rs if not r.diverged]
            rows[policy] = {
                "policy": policy, "label": policy_label(policy),
                "steps": sorted({str(r.config["model"]["steps"]) for r in rs}),
                "seeds": [r.cell.seed for r in rs], "n": len(rs), "epochs": sorted({len(r.metrics) for r in rs}),
                "test_errors": errors, "mean": statistics.fmean(errors),
                "std": statistics.stdev(errors) if len(errors) > 1 else None,
                "diverged": [r.cell.seed for r in rs if r.diverged],
                "T": [None if r.diverged else float(r.profile["evolution_time"]) for r in rs],
                "T_mean": statistics.fmean(times) if times else None,
                "last3_change": statistics.fmean(drift) if drift else None,
                "last3_change_per_seed": drift,
                "runs": [str(r.folder) for r in rs],
            }
        peers = [p for p in PEERS if p in rows]
        best = min(peers, key=lambda p: rows[p]["mean"]) if peers else None
        for policy, row in rows.items():
            row["vs_none"] = (welch(row["test_errors"], rows["none"]["test_errors"])
                              if "none" in rows and policy != "none" else None)
            row["vs_best_peer"] = (welch(row["test_errors"], rows[best]["test_errors"])
                                   if best is not None and policy != best else None)
            source, row["vs_source"] = ablation_source(policy), None
            if source in rows:
                mine, theirs = (dict(zip(rows[p]["seeds"], rows[p]["test_errors"])) for p in (policy, source))
                row["vs_source"] = {"source": source, "paired": paired(mine, theirs),
                                    "welch": welch(row["test_errors"], rows[source]["test_errors"])}
        # One family per model: every policy's comparison with `none`, corrected together.
        family = [row for row in rows.values() if row["vs_none"] is not None]
        for row, p in zip(family, holm([row["vs_none"]["p"] for row in family])):
            row["vs_none_p_holm"] = p
        out[model] = {"best_peer": best, "rows": list(rows.values())}
    return out


def _fmt_ci(test: Optional[dict]) -> str:
    if test is None:
        return "—"
    low, high = test["ci95"]
    mark = " *" if low > 0 or high < 0 else ""
    return f"{test['diff']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def format_table(model_summary: dict) -> str:
    best = model_summary["best_peer"]
    lines = [f"| policy | seeds | final test error % (mean ± std) | per seed | T (mean) | last-3-epoch change | "
             f"Δ vs `none` [95 % CI] | Δ vs best peer `{best}` [95 % CI] |",
             "|---|---|---|---|---:|---:|---|---|"]
    for r in model_summary["rows"]:
        std = "" if r["std"] is None else f" ± {r['std']:.2f}"
        change = "—" if r["last3_change"] is None else f"{r['last3_change']:.2f}"
        label = f"`{r['policy']}`" + ("" if r["label"] == r["policy"] else f" ({r['label']})")
        per_seed = ", ".join(f"{e:.2f}" + ("†" if seed in r["diverged"] else "")
                             for e, seed in zip(r["test_errors"], r["seeds"]))
        t_mean = "—" if r["T_mean"] is None else f"{r['T_mean']:.3f}"
        lines.append(f"| {label} | {r['n']} ({', '.join(map(str, r['seeds']))}) | {r['mean']:.2f}{std} | "
                     f"{per_seed} | {t_mean} | {change} | "
                     f"{_fmt_ci(r['vs_none'])} | {_fmt_ci(r['vs_best_peer'])} |")
    return "\n".join(lines)


def format_ablations(model_summary: dict) -> Optional[str]:
    """The ablations against the run they were built from, or None when there are none."""
    rows = [r for r in model_summary["rows"] if r["vs_source"]]
    if not rows:
        return None
    lines = ["| ablation | source | seeds | Δ vs source, paired by seed [95 % CI] | Δ vs source, Welch [95 % CI] |",
             "|---|---|---|---|---|"]
    for r in rows:
        test = r["vs_source"]
        seeds = "—" if test["paired"] is None else ", ".join(map(str, test["paired"]["seeds"]))
        lines.append(f"| `{r['policy']}` | `{test['source']}` | {seeds} | {_fmt_ci(test['paired'])} | "
                     f"{_fmt_ci(test['welch'])} |")
    return "\n".join(lines)


def _fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def format_holm(model_summary: dict) -> Optional[str]:
    """Each policy's comparison with `none`: Welch p-value and Holm-adjusted over the model's family."""
    rows = [r for r in model_summary["rows"] if r.get("vs_none_p_holm") is not None]
    if not rows:
        return None
    lines = [f"| policy | Δ vs `none` | p (Welch) | p, Holm-adjusted over these {len(rows)} |", "|---|---:|---:|---:|"]
    for r in rows:
        mark = " *" if r["vs_none_p_holm"] < 0.05 else ""
        lines.append(f"| `{r['policy']}` | {r['vs_none']['diff']:+.2f} | {_fmt_p(r['vs_none']['p'])} | "
                     f"{_fmt_p(r['vs_none_p_holm'])}{mark} |")
    return "\n".join(lines)


def _figures(model: str, results: list[Result], out: Path) -> dict[str, Path]:
    from tscnet.analysis.plots import Series, plot_dt_heatmaps, plot_series

    groups: dict[str, list[Result]] = {}
    for r in sorted(results, key=lambda r: r.cell.seed):
        groups.setdefault(r.cell.policy, []).append(r)
    order = _group_order(list(groups))
    controller = {"tsc", "mlp"}
    dashed = {p: parse_name(p) not in controller for p in order}
    files = {}
    curves = [Series.from_runs(p, [r.errors for r in groups[p]], dashed=dashed[p]) for p in order]
    note = "solid: Δt from a controller; dashed: without"
    files["curves"] = plot_series(curves, out / f"{model}_test_error.png", "test error (%)",
                                  f"{model}: test error per epoch (mean ± std over seeds)", note=note)
    epochs = min(s.values.shape[1] for s in curves)
    last = min(epochs, max(4, epochs // 2))  # the end of training, where the policies separate (or not)
    tail = [Series(s.label, s.values[:, epochs - last: epochs], s.dashed) for s in curves]
    files["curves_end"] = plot_series(tail, out / f"{model}_test_error_end.png", "test error (%)",
                                      f"{model}: test error over the last {last} epochs (mean ± std over seeds)",
                                      note=note, first=epochs - last + 1)
    finished = {p: [r for r in groups[p] if not r.diverged] for p in order}  # a diverged run has no final Δt
    profiles = [Series.from_runs(p, [[float(np.mean(b)) for b in r.profile["dt"]] for r in finished[p]], dashed=dashed[p])
                for p in order if finished[p]]
    if profiles:
        files["profiles"] = plot_series(profiles, out / f"{model}_dt_profile.png", "final mean_c Δt_d",
                                        f"{model}: final step size of each block "
                                        "(mean over channels; mean ± std over seeds)",
                                        note=note, xlabel="residual block d (1 = first)")
    learned = [p for p in order if parse_name(p) not in ("none", "fixed", "depth") and finished[p]]
    if learned:
        panels = [(f"{p} (seed {finished[p][0].cell.seed})",
                   [np.asarray(b, dtype=float) for b in finished[p][0].profile["dt"]]) for p in learned]
        files["heatmap"] = plot_dt_heatmaps(panels, out / f"{model}_dt_heatmap.png")
    return files


def parse_name(policy: str) -> str:
    return policy.partition(":")[0]


def build_report(results: Path) -> Path:
    """Write ``report.md``, ``summary.json`` and the figures into ``results`` from its committed runs."""
    results = Path(results)
    found = load_results(results)
    if not found:
        raise UserError(f"no committed results under {results}")
    summary = summarize(found)
    recipes: dict[str, list[str]] = {}
    for r in found:
        recipe = _definition(r.config, r.config)
        recipe.pop("model")
        recipe["train"].pop("seed")
        recipes.setdefault(json.dumps(recipe, sort_keys=True), []).append(str(r.cell))
    mixed = len(recipes) > 1
    sections = [
        f"# Converged study: {len(found)} runs on {found[0].config['data']['name']}\n",
        "Written by `python benchmarks/converged.py` from the committed per-run results in this folder "
        "(`<model>/<policy>/seed<k>/`: config, metrics per epoch, final Δt profile, model card). "
        "Every number below is recomputed from those files.\n",
        "**Method.** Final-epoch test error (never the best epoch), mean ± sample std over seeds; the same "
        "seed gives every policy the same initial weights and batches. *T* = Σ_d mean_c Δt_d at the end. "
        "*Last-3-epoch change*: mean over seeds of |err_E − err_{E−3}| (convergence: small means flat). "
        "*Δ*: difference of mean final errors (policy − reference, percentage points; negative = better "
        "than the reference) with the 95 % confidence interval of Welch's unequal-variance t-test "
        "(`scipy.stats.ttest_ind(equal_var=False).confidence_interval(0.95)`); * marks an interval that "
        "excludes 0. Best peer: the controller-free peer (" + ", ".join(f"`{p}`" for p in PEERS) + ") with the "
        "lowest mean error for that model. Ablations of `tsc` (same model and seed): its final "
        "per-block, per-channel Δt frozen from the first step (`profile-of:tsc`), and a uniform fixed step "
        "equal to its final T / D (`fixed-of:tsc`); each is also compared with its source run seed by seed "
        "(paired t-test, `scipy.stats.ttest_rel`, over the seeds both have). A run that diverged (the engine "
        "stopped it at a NaN or infinite loss) counts at chance error (100 − 100 / classes %) and is marked †; it has no T or Δt profile "
        "and no ablations.\n",
    ]
    if mixed:
        sections.append("**WARNING: the runs do not share one recipe** (model, seed and placement aside):\n")
        sections += [f"- `{text}`: {', '.join(cells)}" for text, cells in recipes.items()] + [""]
    else:
        sections.append("Recipe (identical for every cell; model, seed and placement aside): "
                        f"`{next(iter(recipes))}`\n")
    figures = {}
    for model, model_summary in summary.items():
        files = _figures(model, [r for r in found if r.cell.model == model], results)
        figures[model] = {k: v.name for k, v in files.items()}
        sections += [f"## {model}\n", format_table(model_summary) + "\n"]
        ablations = format_ablations(model_summary)
        if ablations:
            sections += ["Ablations against the run each was built from (same model and seed; negative = the "
                         "ablation is better):\n", ablations + "\n"]
        corrected = format_holm(model_summary)
        if corrected:
            sections += ["Multiple comparisons: the table's intervals are per comparison. Corrected together "
                         "(Holm–Bonferroni over every policy's comparison with `none` for this model; * marks "
                         "an adjusted p below 0.05):\n", corrected + "\n"]
        sections += [f"![test error per epoch]({files['curves'].name})\n",
                     f"![test error over the last epochs]({files['curves_end'].name})\n"]
        if "profiles" in files:
            sections.append(f"![final Δt per block]({files['profiles'].name})\n")
        if "heatmap" in files:
            sections.append(f"![final Δt per block and channel]({files['heatmap'].name})\n")
    path = results / "report.md"
    path.write_text("\n".join(sections))
    rel = {model: {**s, "rows": [{**row, "runs": [os.path.relpath(f, results) for f in row["runs"]]}
                                 for row in s["rows"]]}
           for model, s in summary.items()}
    (results / "summary.json").write_text(json.dumps({
        "method": {"error": "final-epoch test error %, mean ± sample std over seeds",
                   "ci": "Welch t-test 95 % CI of mean(policy) - mean(reference), "
                         "scipy.stats.ttest_ind(equal_var=False)",
                   "p_holm": "vs_none_p_holm: Welch p-value vs none, Holm-Bonferroni adjusted over every "
                             "policy's comparison with none for the model",
                   "convergence": "mean over seeds of |err_E - err_{E-3}|", "peers": PEERS,
                   "vs_source": "ablation - its source run: paired t-test over common seeds "
                                "(scipy.stats.ttest_rel) and Welch"},
        "recipe": [json.loads(text) for text in recipes], "recipe_cells": list(recipes.values()),
        "models": rel, "figures": figures,
    }, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=RECIPE, help=f"recipe file or name in tscnet/configs/ (default {RECIPE})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--policies", nargs="+", default=POLICIES)
    p.add_argument("--seeds", nargs="+", type=int, help="seeds for every model (default: "
                   + "; ".join(f"{m} {' '.join(map(str, s))}" for m, s in MODELS.items()) + ")")
    p.add_argument("--runs", type=Path, help="scratch run folders (git-ignored; default runs/<name of --results>)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "converged",
                   help="committed per-run results and the report")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-hours", type=float, help="start no run after this many hours (nor one that would end later)")
    p.add_argument("--commit", action="store_true", help="git-commit each finished run's results as it lands")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the committed results")
    p.add_argument("--dry-run", action="store_true", help="list the cells in run order with their state; run nothing")
    args = p.parse_args(argv)
    # Another results folder (another recipe, another data set) gets its own scratch runs.
    args.runs = args.runs or ROOT / "runs" / args.results.resolve().name
    try:
        counts = {"failed": 0}
        if args.dry_run:
            cells = plan(args.models, args.policies, args.seeds)
            check_recipe(cells, args.results.resolve(), args.recipe, args.set)
            for cell in cells:
                print(f"{cell_state(cell, args.runs, args.results):<26} {cell}")
            return 0
        if not args.report_only:
            cells = plan(args.models, args.policies, args.seeds)
            counts = run_study(cells, args.runs, args.results, args.recipe, args.set, args.workers, args.threads,
                               args.max_hours, args.commit)
        if load_results(args.results):
            report = build_report(args.results)
            print(f"report: {report}")
            if args.commit:
                files = [report, args.results / "summary.json", *sorted(args.results.glob("*.png"))]
                git_commit(files, f"converged: report ({len(load_results(args.results))} runs)")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if counts["failed"] or counts.get("stopped") else 0


if __name__ == "__main__":
    sys.exit(main())
