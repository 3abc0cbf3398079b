"""Every bad input answered: one table of what a careful user might type.

Each case is a command line (built in a fresh folder, from files the case writes first) that must
be refused the way every user error is: exit status 2, one line on stderr that starts with
``tscnet <command>: error:`` and names the problem, no traceback, and nothing on disk created,
changed or half-written (every file under the case's folder and under the shared run, byte for
byte, and no new file or folder). Most cases are refused before any data is read; the few that
need a real run folder share one tiny run (``run``), copied where a case damages it.

Semantics decided here (see ``tscnet.train.config.RULES``):

* ``--epochs 0`` (a run that trains nothing) is refused, as are negative epochs, batch sizes,
  subsets, seeds and worker counts; a whole float for an integer key (``train.epochs=2.0``) is
  taken as the integer, any other float (``1.5``) is refused;
* ``--steps fixed:0``, negative or infinite fixed steps and learnable steps starting below 0 or at NaN/inf are refused (Δt ≤ 0 would freeze or reverse the
  residual flow; ``none`` is the vanilla ResNet);
* ``sched.milestones`` are positive numbers: below 1 a fraction of the run, from 1 on an epoch
  (``[2.0]`` is epoch 2 and accepted); ``sched.gamma > 1`` is allowed (it is how the divergence
  test provokes a NaN loss);
* argparse's own errors (``--epochs abc``, a missing argument) are one line too.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from tscnet.cli import ORDER, main

STUDY = "recipe: fashion_mnist_grid\nmodels: [cifar_resnet8]\npolicies: [none]\n"  # a valid study spec
TINY = ["--data", "fashion-mnist", "--model", "cifar_resnet8", "--no-progress", "--steps", "tsc",
        "--train-subset", "64", "--test-subset", "64", "--batch-size", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished run (1 epoch, 64 images): config.yaml, metrics.jsonl, checkpoint.pt, model.safetensors."""
    out = tmp_path_factory.mktemp("shared") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


@dataclass
class Env:
    tmp: Path  # the case's own folder (also the working directory)
    run: Path  # the shared run: never to be changed

    def copy(self, name: str = "copy", edit: Callable[[dict], None] | None = None, **files) -> Path:
        """A copy of the shared run; ``edit`` changes its config; ``files`` replace or (None) delete files."""
        dest = self.tmp / name
        shutil.copytree(self.run, dest)
        if edit is not None:
            config = yaml.safe_load((dest / "config.yaml").read_text())
            edit(config)
            (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for filename, data in files.items():
            path = dest / filename.replace("__", ".")
            if data is None:
                path.unlink()
            else:
                path.write_bytes(data.encode() if isinstance(data, str) else data)
        return dest

    def file(self, name: str, data) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def folder(self, name: str) -> str:
        (self.tmp / name).mkdir()
        return str(self.tmp / name)


def train(*argv: str) -> Callable[[Env], list]:
    """``tscnet train`` of the tiny recipe with ``argv`` added, into a folder that does not exist yet."""
    return lambda env: ["train", *TINY, *argv, "--out", str(env.tmp / "new")]


def settings(**values) -> Callable[[dict], None]:
    """A config edit: ``settings(model__name="x")`` sets config["model"]["name"]."""
    def edit(config: dict) -> None:
        for key, value in values.items():
            section, name = key.split("__")
            config[section][name] = value
    return edit


def other_dataset(env: Env) -> str:
    return str(env.copy("mnist", settings(data__name="mnist")))


def tensor_checkpoint(env: Env) -> str:
    path = env.tmp / "tensor.pt"
    torch.save(torch.zeros(3), path)
    return str(path)


GARBAGE = b"\x00\x01 this is not a checkpoint \xff" * 10


def truncated(env: Env, name: str) -> bytes:
    data = (env.run / name).read_bytes()
    return data[: len(data) // 2]


# (id, command line built from Env, text the one error line must contain)
CASES = [
    # ---- train: flags out of range or of the wrong type -------------------------------------
    ("train-epochs-0", train("--epochs", "0"), "train.epochs must be a positive integer, got 0"),
    ("train-epochs-negative", train("--epochs", "-1"), "train.epochs must be a positive integer, got -1"),
    ("train-epochs-not-int", train("--epochs", "abc"), "argument --epochs: invalid int value: 'abc'"),
    ("train-batch-size-0", train("--batch-size", "0"), "data.batch_size must be a positive integer, got 0"),
    ("train-download-not-a-bool", train("--set", "data.download=maybe"), "'data.download' must be true or false, got 'maybe'"),
    ("train-download-without-data-dir", lambda env: ["train", "--data", "mnist", "--set", "data.download=true",
                                                     "--no-progress", "--out", str(env.tmp / "new")],
     "data.download=true needs a data_dir to download mnist into"),
    ("train-batch-size-negative", train("--batch-size", "-32"), "data.batch_size must be a positive integer, got -32"),
    ("train-lr-negative", train("--lr", "-1"), "optim.lr must be a positive finite number, got -1.0"),
    ("train-lr-0", train("--lr", "0"), "optim.lr must be a positive finite number, got 0.0"),
    ("train-lr-nan", train("--lr", "nan"), "optim.lr must be a positive finite number, got nan"),
    ("train-lr-inf", train("--lr", "inf"), "optim.lr must be a positive finite number, got inf"),
    ("train-train-subset-0", train("--train-subset", "0"), "data.train_subset must be a positive integer"),
    ("train-train-subset-negative", train("--train-subset", "-5"), "data.train_subset must be a positive integer"),
    ("train-train-subset-too-big", train("--train-subset", "1000000"), "train_subset must be in [1, 60000], got 1000000"),
    ("train-test-subset-negative", train("--test-subset", "-1"), "data.test_subset must be a positive integer"),
    ("train-seed-negative", train("--seed", "-1"), "train.seed must be an integer in [0, 2**64 - 1], got -1"),
    ("train-device-bogus", train("--device", "bogus"), "unknown device 'bogus'"),
    ("train-data-bogus", train("--data", "fashion-mnits"), "fashion-mnist"),
    ("train-model-bogus", train("--model", "cifar_resnet21"), "cifar_resnet20"),
    ("train-steps-bogus", train("--steps", "bogus"), "bogus"),
    ("train-norm-bogus", train("--set", "model.norm=layer"), "model.norm must be null (the model's), batch or none"),
    ("train-init-bogus", train("--set", "model.init=orthogonal"), "model.init must be null (the model's), he, zero_last"),
    ("train-init-fixup-with-bn", train("--set", "model.init=fixup"), "init 'fixup' is for norm-free post-activation nets"),
    ("train-steps-on-fixup", train("--set", "model.norm=none", "--set", "model.init=fixup", "--steps", "tsc"),
     "cannot attach steps to FixupBasicBlock"),
    ("train-steps-dt-init-bogus", train("--steps", "tsc:dt_init=deep"), "option dt_init='deep' is not a valid number, depth:P or cait"),
    ("train-steps-fixed-0", train("--steps", "fixed:0"), "fixed step must be a positive finite number, got 0.0"),
    ("train-steps-fixed-negative", train("--steps", "fixed:-1"), "fixed step must be a positive finite number"),
    ("train-steps-fixed-inf", train("--steps", "fixed:inf"), "fixed step must be a positive finite number, got inf"),
    ("train-steps-scalar-nan", train("--steps", "scalar:nan"), "a learnable step must start at a finite number ≥ 0, got init=nan"),
    ("train-steps-channel-negative", train("--steps", "channel:-1"), "a learnable step must start at a finite number ≥ 0, got init=-1.0"),
    ("train-steps-layerscale-inf", train("--steps", "layerscale:inf"), "a learnable step must start at a finite number ≥ 0, got init=inf"),
    ("train-steps-hidden-negative", train("--steps", "tsc:hidden=-1"), "hidden must be a positive size"),
    # ---- train: --set of every section ---------------------------------------------------------
    ("set-eval-batch-size-0", train("--set", "data.eval_batch_size=0"), "data.eval_batch_size must be a positive integer, got 0"),
    ("set-workers-negative", train("--set", "data.workers=-1"), "data.workers must be an integer >= 0, got -1"),
    ("set-image-size-0", train("--set", "data.image_size=0"), "data.image_size must be a positive integer or null, got 0"),
    ("set-augment-not-bool", train("--set", "data.augment=maybe"), "'data.augment' must be true or false, got 'maybe'"),
    ("set-momentum-2", train("--set", "optim.momentum=2"), "optim.momentum must be a number in [0, 1), got 2.0"),
    ("set-weight-decay-negative", train("--set", "optim.weight_decay=-1"), "optim.weight_decay must be a finite number >= 0, got -1.0"),
    ("set-label-smoothing-1", train("--set", "optim.label_smoothing=1"), "optim.label_smoothing must be a number in [0, 1), got 1.0"),
    ("set-nesterov-without-momentum", train("--set", "optim.nesterov=true", "--set", "optim.momentum=0"),
     "optim.nesterov needs optim.momentum > 0"),
    ("set-lr-not-a-number", train("--set", "optim.lr=abc"), "config key 'optim.lr' must be a number, got 'abc'"),
    ("set-lr-a-list", train("--set", "optim.lr=[0.1]"), "config key 'optim.lr' must be a number, got [0.1]"),
    ("set-sched-name-bogus", train("--set", "sched.name=bogus"), "sched.name must be one of multistep, step, cosine, constant, got 'bogus'"),
    ("set-milestones-not-a-list", train("--set", "sched.milestones=5"), "sched.milestones must be a list of positive numbers"),
    ("set-milestones-not-numbers", train("--set", "sched.milestones=[abc]"), "sched.milestones must be a list of positive numbers"),
    ("set-milestones-negative", train("--set", "sched.milestones=[-1]"), "got [-1]"),
    ("set-warmup-epochs-negative", train("--set", "sched.warmup_epochs=-1"), "sched.warmup_epochs must be a finite number of epochs >= 0, got -1.0"),
    ("set-warmup-start-2", train("--set", "sched.warmup_start=2"), "sched.warmup_start must be a number in [0, 1], got 2.0"),
    ("set-gamma-0", train("--set", "sched.gamma=0"), "sched.gamma must be a positive finite number, got 0.0"),
    ("set-step-size-0", train("--set", "sched.name=step", "--set", "sched.step_size=0"), "sched.step_size must be a positive number of epochs, got 0"),
    ("set-amp-bogus", train("--set", "train.amp=bogus"), "train.amp must be one of auto, bf16, fp16, off, got 'bogus'"),
    ("set-channels-last-bogus", train("--set", "train.channels_last=maybe"), "train.channels_last must be auto, true or false, got 'maybe'"),
    ("set-log-bogus", train("--set", "train.log=bogus"), "train.log must be one of none, tensorboard; got 'bogus'"),
    ("set-checkpoint-every-negative", train("--set", "train.checkpoint_every=-3"), "train.checkpoint_every must be 0 (off)"),
    ("set-checkpoint-every-fractional", train("--set", "train.checkpoint_every=1.5"), "train.checkpoint_every must be 0 (off)"),
    ("set-epochs-fractional", train("--set", "train.epochs=1.5"), "train.epochs must be a positive integer, got 1.5"),
    ("set-epochs-bool", train("--set", "train.epochs=true"), "train.epochs must be a positive integer, got True"),
    ("set-seed-not-a-number", train("--set", "train.seed=abc"), "config key 'train.seed' must be a number, got 'abc'"),
    ("set-num-classes-0", train("--set", "model.num_classes=0"), "model.num_classes must be a positive integer or null"),
    ("set-unknown-key", train("--set", "optim.lrr=0.1"), "unknown config key 'optim.lrr' (did you mean optim.lr?)"),
    ("set-unknown-section", train("--set", "bogus.key=1"), "unknown config key 'bogus'"),
    ("set-no-equals", train("--set", "optim"), "must look like section.key=value"),
    ("set-below-a-value", train("--set", "model.name.x=1"), "config key 'model.name' is a value, not a section"),
    # ---- train: recipe files ---------------------------------------------------------------------
    ("recipe-not-yaml", lambda env: ["train", "--config", env.file("bad.yaml", "model: [unclosed\n  : :"), "--out", str(env.tmp / "new")],
     "is not valid YAML"),
    ("recipe-a-list", lambda env: ["train", "--config", env.file("list.yaml", "- 1\n- 2\n"), "--out", str(env.tmp / "new")],
     "must be a mapping of sections, got list"),
    ("recipe-section-not-a-mapping", lambda env: ["train", "--config", env.file("s.yaml", "optim: 5\n"), "--out", str(env.tmp / "new")],
     "config key 'optim' must be a mapping, got 5"),
    ("recipe-epochs-0", lambda env: ["train", "--config", env.file("e.yaml", "train: {epochs: 0}\n"), "--out", str(env.tmp / "new")],
     "train.epochs must be a positive integer, got 0"),
    ("recipe-missing", lambda env: ["train", "--config", "no_such_recipe", "--out", str(env.tmp / "new")], "not found"),
    # ---- train: --out and --resume ----------------------------------------------------------------
    ("train-out-is-a-file", lambda env: ["train", *TINY, "--out", env.file("afile", "keep me")], "is a file, not a folder"),
    ("train-out-under-a-file", lambda env: ["train", *TINY, "--out", env.file("afile", "keep me") + "/run"], "is a file, not a folder"),
    ("train-out-holds-a-run", lambda env: ["train", *TINY, "--out", str(env.run)], "already holds a run; pass --resume"),
    ("resume-not-a-run", lambda env: ["train", "--resume", "--out", env.folder("empty")], "is not a tscnet run folder"),
    ("resume-out-is-a-file", lambda env: ["train", "--resume", "--out", env.file("afile", "x")], "is a file, not a folder"),
    ("resume-corrupt-config", lambda env: ["train", "--resume", "--out", str(env.copy(config__yaml="model: [unclosed"))],
     "config.yaml is not valid YAML"),
    ("resume-conflicting-flag", lambda env: ["train", "--resume", "--epochs", "5", "--out", str(env.run)],
     "train.epochs (saved 1, given 5)"),
    ("resume-garbage-checkpoint", lambda env: ["train", "--resume", "--no-progress", "--out", str(env.copy(checkpoint__pt=GARBAGE))],
     "cannot load checkpoint"),
    # ---- eval: folders and files that are not (this) run ----------------------------------------------
    ("eval-not-a-run", lambda env: ["eval", env.folder("empty")], "is not a tscnet run folder (no config.yaml)"),
    ("eval-missing-path", lambda env: ["eval", str(env.tmp / "nothing")], "is neither a run folder nor a checkpoint file"),
    ("eval-corrupt-config", lambda env: ["eval", str(env.copy(config__yaml="model: {name: [x"))], "config.yaml is not valid YAML"),
    ("eval-binary-config", lambda env: ["eval", str(env.copy(config__yaml=GARBAGE))], "config.yaml is not valid YAML"),
    ("eval-config-a-list", lambda env: ["eval", str(env.copy(config__yaml="- model\n- data\n"))], "must be a mapping of sections"),
    ("eval-config-without-model", lambda env: ["eval", str(env.copy(config__yaml="data: {name: fashion-mnist}\n"))],
     "does not say which run it is: no model.name, model.steps"),
    ("eval-config-bad-value", lambda env: ["eval", str(env.copy(edit=settings(data__batch_size=0)))],
     "config.yaml: data.batch_size must be a positive integer, got 0"),
    ("eval-config-unknown-key", lambda env: ["eval", str(env.copy(edit=settings(optim__lrr=0.1)))],
     "unknown config key 'optim.lrr'"),
    ("eval-truncated-checkpoint", lambda env: ["eval", str(env.copy(checkpoint__pt=truncated(env, "checkpoint.pt")))],
     "cannot load checkpoint"),
    ("eval-garbage-checkpoint", lambda env: ["eval", str(env.copy(checkpoint__pt=GARBAGE))], "cannot load checkpoint"),
    ("eval-checkpoint-of-another-model", lambda env: ["eval", str(env.copy(edit=settings(model__name="cifar_resnet20")))],
     "holds model cifar_resnet8 with steps 'tsc', but the run is model cifar_resnet20"),
    ("eval-checkpoint-of-another-shape", lambda env: ["eval", str(env.copy(edit=settings(model__num_classes=100)))],
     "does not fit the run's cifar_resnet8 (num_classes=100"),
    ("eval-checkpoint-file-garbage", lambda env: ["eval", env.file("x.pt", GARBAGE)], "cannot load checkpoint"),
    ("eval-checkpoint-file-a-tensor", lambda env: ["eval", tensor_checkpoint(env)], "is not a tscnet checkpoint (it holds a Tensor"),
    ("eval-garbage-safetensors", lambda env: ["eval", str(env.copy(checkpoint__pt=None, model__safetensors=GARBAGE))],
     "does not hold the folded cifar_resnet8"),
    ("eval-truncated-safetensors", lambda env: ["eval", str(env.copy(checkpoint__pt=None, model__safetensors=truncated(env, "model.safetensors")))],
     "does not hold the folded cifar_resnet8"),
    ("eval-batch-size-0", lambda env: ["eval", str(env.run), "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ("eval-test-subset-negative", lambda env: ["eval", str(env.run), "--test-subset", "-1"], "--test-subset must be a positive integer, got -1"),
    ("eval-device-bogus", lambda env: ["eval", str(env.run), "--device", "bogus"], "--device must be a device such as cpu"),
    # ---- fold ----------------------------------------------------------------------------------------
    ("fold-out-exists", lambda env: ["fold", str(env.run), "--out", env.file("w.safetensors", "earlier")], "already exists"),
    ("fold-out-folder-missing", lambda env: ["fold", str(env.run), "--out", str(env.tmp / "no" / "w.safetensors")], "does not exist"),
    ("fold-not-a-run", lambda env: ["fold", env.folder("empty"), "--out", str(env.tmp / "w.safetensors")], "is not a tscnet run folder"),
    ("fold-garbage-checkpoint", lambda env: ["fold", str(env.copy(checkpoint__pt=GARBAGE)), "--out", str(env.tmp / "w.safetensors")],
     "cannot load checkpoint"),
    ("fold-without-out", lambda env: ["fold", str(env.run)], "one of the arguments --out --timm-dir is required"),
    ("fold-out-and-timm-dir", lambda env: ["fold", str(env.run), "--out", str(env.tmp / "w.safetensors"), "--timm-dir",
                                           str(env.tmp / "hub")], "not allowed with argument"),
    ("fold-timm-dir-not-timm", lambda env: ["fold", str(env.run), "--timm-dir", str(env.tmp / "hub")],
     "--timm-dir needs a timm-family model; this run's model is cifar_resnet8"),
    ("fold-timm-dir-exists", lambda env: ["fold", str(env.run), "--timm-dir", str(env.file("hub", "earlier"))],
     "already exists and is not an empty folder"),
    # ---- ode -----------------------------------------------------------------------------------------
    ("ode-h-0", lambda env: ["ode", "--h", "0"], "--h must be positive finite step sizes, got 0"),
    ("ode-h-negative", lambda env: ["ode", "--h", "0.1", "-1"], "--h must be positive finite step sizes, got -1"),
    ("ode-h-nan", lambda env: ["ode", "--h", "nan"], "--h must be positive finite step sizes, got nan"),
    ("ode-h-not-a-number", lambda env: ["ode", "--h", "abc"], "argument --h: invalid float value: 'abc'"),
    ("ode-tol-0", lambda env: ["ode", "--tol", "0"], "--tol must be a positive finite tolerance, got 0"),
    ("ode-tol-inf", lambda env: ["ode", "--tol", "inf"], "--tol must be a positive finite tolerance, got inf"),
    ("ode-safety-2", lambda env: ["ode", "--safety", "2"], "--safety must be in (0, 1], got 2"),
    ("ode-safety-nan", lambda env: ["ode", "--safety", "nan"], "--safety must be in (0, 1], got nan"),
    ("ode-order-0", lambda env: ["ode", "--order", "0"], "--order must be >= 1, got 0"),
    ("ode-out-is-a-file", lambda env: ["ode", "--out", env.file("afile", "keep me")], "is a file, not a folder"),
    ("ode-over-an-earlier-ode", lambda env: ["ode", "--out", str(Path(env.file("o/ode.json", "{}")).parent)],
     "already holds ode.json from an earlier call; choose another --out, or pass --overwrite"),
    # ---- stability -----------------------------------------------------------------------------------
    ("stability-no-runs", lambda env: ["stability"], "the following arguments are required: RUN"),
    ("stability-not-a-run", lambda env: ["stability", env.folder("empty")], "is not a tscnet run folder"),
    ("stability-two-datasets", lambda env: ["stability", str(env.run), other_dataset(env), "--out", str(env.tmp / "s")],
     "runs of different datasets cannot be compared"),
    ("stability-broken-metrics", lambda env: ["stability", str(env.copy(metrics__jsonl='{"epoch": 1, "test_error"\n')), "--out", str(env.tmp / "s")],
     "metrics.jsonl line 1 is not valid JSON"),
    ("stability-no-checkpoint-broken-steps", lambda env: ["stability", str(env.copy(checkpoint__pt=None, steps__json="{not json")), "--out", str(env.tmp / "s")],
     "without checkpoint.pt: step profile"),
    ("stability-no-checkpoint-no-steps", lambda env: ["stability", str(env.copy(checkpoint__pt=None, steps__json=None)), "--out", str(env.tmp / "s")],
     "has no steps.json"),
    ("stability-no-checkpoint-garbage-safetensors", lambda env: ["stability", str(env.copy(checkpoint__pt=None, model__safetensors=GARBAGE)), "--out", str(env.tmp / "s")],
     "does not hold the folded"),
    ("stability-images-0", lambda env: ["stability", str(env.run), "--images", "0"], "--images must be a positive integer, got 0"),
    ("stability-eps-nan", lambda env: ["stability", str(env.run), "--eps", "nan"], "--eps must be a positive finite number, got nan"),
    ("stability-eps-negative", lambda env: ["stability", str(env.run), "--eps", "-1"], "--eps must be a positive finite number, got -1"),
    ("stability-norm-bogus", lambda env: ["stability", str(env.run), "--norm", "bogus"], "argument --norm: invalid choice: 'bogus'"),
    ("stability-out-is-a-file", lambda env: ["stability", str(env.run), "--out", env.file("afile", "keep me")], "is a file, not a folder"),
    ("stability-over-an-earlier-study", lambda env: ["stability", str(env.run), "--out", str(Path(env.file("s/stability.md", "# mine")).parent)],
     "already holds stability.md from an earlier call"),
    # ---- report --------------------------------------------------------------------------------------
    ("report-no-runs", lambda env: ["report", "--out", str(env.tmp / "r")], "the following arguments are required: RUN"),
    ("report-without-out", lambda env: ["report", str(env.run)], "the following arguments are required: --out"),
    ("report-two-datasets", lambda env: ["report", str(env.run), other_dataset(env), "--out", str(env.tmp / "r")],
     "runs of different datasets cannot be compared"),
    ("report-broken-metrics", lambda env: ["report", str(env.copy(metrics__jsonl='{"epoch": 1}\n{"epoch": 2, "test_\n')), "--out", str(env.tmp / "r")],
     "metrics.jsonl line 2 is not valid JSON"),
    ("report-metrics-not-objects", lambda env: ["report", str(env.copy(metrics__jsonl="[1, 2]\n")), "--out", str(env.tmp / "r")],
     "metrics.jsonl line 1 is not an epoch's metrics"),
    ("report-empty-metrics", lambda env: ["report", str(env.copy(metrics__jsonl="")), "--out", str(env.tmp / "r")],
     "has no finished epoch"),
    ("report-out-is-a-file", lambda env: ["report", str(env.run), "--out", env.file("afile", "keep me")], "is a file, not a folder"),
    ("report-over-an-earlier-report", lambda env: ["report", str(env.run), "--out", str(Path(env.file("r/report.md", "# mine")).parent)],
     "already holds report.md from an earlier call"),
    ("report-stability-missing", lambda env: ["report", str(env.run), "--out", str(env.tmp / "r"), "--stability", str(env.tmp / "s.json")],
     "does not exist"),
    ("report-stability-garbage", lambda env: ["report", str(env.run), "--out", str(env.tmp / "r"), "--stability", env.file("s.json", "{not json")],
     "is not valid JSON"),
    ("report-stability-not-a-study", lambda env: ["report", str(env.run), "--out", str(env.tmp / "r"), "--stability", env.file("s.json", "[1]")],
     "is not a tscnet stability.json"),
    ("report-stability-other-dataset", lambda env: ["report", str(env.run), "--out", str(env.tmp / "r"), "--stability",
                                                   env.file("s.json", json.dumps({"data": "mnist", "runs": []}))],
     "is about mnist, the runs are fashion-mnist"),
    # ---- study --------------------------------------------------------------------------------------
    ("study-spec-missing", lambda env: ["study", str(env.tmp / "nope.yaml")], "study spec"),
    ("study-spec-not-yaml", lambda env: ["study", env.file("s.yaml", "models: [")], "is not valid YAML"),
    ("study-spec-unknown-key", lambda env: ["study", env.file("s.yaml", STUDY + "policy: [none]\n")],
     "policy: unknown key (did you mean policies?)"),
    ("study-policy-bogus", lambda env: ["study", env.file("s.yaml", STUDY.replace("[none]", "[none, tscc]"))],
     "policies[1]: unknown step policy 'tscc'"),
    ("study-ablation-without-source", lambda env: ["study", env.file("s.yaml", STUDY.replace("[none]", "[none, fixed-of:tsc]"))],
     "its source arm 'tsc' is not among the policies"),
    ("study-override-bogus", lambda env: ["study", env.file("s.yaml", STUDY), "--set", "optim.lrr=1", "--dry-run"],
     "unknown config key 'optim.lrr'"),
    ("study-workers-0", lambda env: ["study", env.file("s.yaml", STUDY), "--workers", "0", "--results", str(env.tmp / "r")],
     "--workers must be at least 1"),
    ("study-max-hours-0", lambda env: ["study", env.file("s.yaml", STUDY), "--max-hours", "0", "--results", str(env.tmp / "r")],
     "--max-hours must be a positive number of hours, got 0"),
    ("study-slurm-flag-on-local", lambda env: ["study", env.file("s.yaml", STUDY), "--partition", "gpu"], "is a Slurm option"),
    ("study-report-without-results", lambda env: ["study", env.file("s.yaml", STUDY), "--report-only", "--results", str(env.tmp / "r")],
     "no results folder"),
    ("study-data-missing", lambda env: ["study", env.file("s.yaml", STUDY), "--set", f"data.data_dir={env.tmp / 'nodata'}",
                                        "--results", str(env.tmp / "r"), "--runs", str(env.tmp / "runs")],
     "(a folder to download into); no cell was started"),
    # ---- demo and the top level ----------------------------------------------------------------------
    ("demo-epochs-0", lambda env: ["demo", "--epochs", "0", "--out", str(env.tmp / "demo")], "train.epochs must be a positive integer, got 0"),
    ("demo-train-subset-negative", lambda env: ["demo", "--train-subset", "-5", "--out", str(env.tmp / "demo")],
     "data.train_subset must be a positive integer"),
    ("demo-policy-bogus", lambda env: ["demo", "--policies", "none", "bogus", "--out", str(env.tmp / "demo")], "bogus"),
    ("demo-data-dir-missing", lambda env: ["demo", "--data-dir", str(env.tmp / "nodata"), "--out", str(env.tmp / "demo")],
     "fashion-mnist data directory"),
    ("demo-train-subset-too-large", lambda env: ["demo", "--train-subset", "60001", "--out", str(env.tmp / "demo")],
     "train_subset must be in [1, 60000], got 60001"),
    ("demo-out-under-a-file", lambda env: ["demo", "--epochs", "1", "--out", env.file("afile", "x") + "/demo"], "is a file, not a folder"),
    ("list-what-bogus", lambda env: ["list", "bogus"], "argument WHAT: invalid choice: 'bogus'"),
    ("unknown-command", lambda env: ["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
]


def _snapshot(*roots: Path) -> dict:
    """Every file's bytes and every folder (None) under ``roots``."""
    return {str(p): (p.read_bytes() if p.is_file() else None) for root in roots for p in [root, *sorted(root.rglob("*"))]}


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    assert set(ORDER) <= {c[0].split("-")[0] for c in CASES} | {"train"}


@pytest.mark.slow  # a hundred command lines, some building models
@pytest.mark.parametrize("argv, message", [pytest.param(build, message, id=name) for name, build, message in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(argv, message, run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default output folders (ode, stability) land where the snapshot sees them
    args = [str(a) for a in argv(Env(tmp_path, run))]
    before = _snapshot(tmp_path, run)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    command = args[0] if args[0] in ORDER else None
    prefix = f"tscnet {command}: error: " if command else "tscnet: error: "
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(prefix), err
    assert message in err, err
    assert _snapshot(tmp_path, run) == before, "a refused command changed files"
