"""Every JSON record and checkpoint tscnet writes carries a format version; a file of a newer format
is refused in one line naming it, and files from before versions (no key) are read as version 1."""
from __future__ import annotations

import json

import pytest
import torch

from tscnet.cli import main
from tscnet.formats import FORMAT_KEY, FORMAT_VERSION
from tscnet.jobs.run_folder import RunFolder
from tscnet.train.machine import read_platforms

TINY = ["train", "--data", "fashion-mnist", "--model", "cifar_resnet8", "--steps", "tsc", "--no-progress",
        "--train-subset", "128", "--test-subset", "64", "--epochs", "1", "--batch-size", "64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("formats") / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    return RunFolder(out)


def test_the_files_of_a_run_carry_the_format_version(run):
    for path in (run.steps_file, run.card_file, run.platform_file):
        assert json.loads(path.read_text())[FORMAT_KEY] == FORMAT_VERSION, path.name
    assert torch.load(run.checkpoint_file, weights_only=True)[FORMAT_KEY] == FORMAT_VERSION


def test_a_platform_file_from_before_versions_is_still_read(run, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / RunFolder.PLATFORM).write_text(json.dumps([{"device": "cpu", "threads": 1}]))
    assert read_platforms(old) == [{"device": "cpu", "threads": 1}]
    assert read_platforms(run.path)[0]["from_step"] == 0


def _newer(path, capsys_error: str) -> None:
    assert "written by a newer tscnet (file format 2" in capsys_error and str(path) in capsys_error


def test_files_of_a_newer_format_are_refused_in_one_line(run, tmp_path, capsys):
    steps = json.loads(run.steps_file.read_text())
    newer = tmp_path / "steps.json"
    newer.write_text(json.dumps({**steps, FORMAT_KEY: FORMAT_VERSION + 1}))
    capsys.readouterr()
    assert main(TINY + ["--steps", f"profile:{newer}", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    _newer(newer, err)
    checkpoint = torch.load(run.checkpoint_file, weights_only=True)
    checkpoint[FORMAT_KEY] = FORMAT_VERSION + 1
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (RunFolder.CONFIG, RunFolder.METRICS):
        (copy / name).write_bytes((run.path / name).read_bytes())
    (copy / RunFolder.CHECKPOINT).write_bytes((tmp_path / "checkpoint.pt").read_bytes())
    assert main(["eval", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    _newer(copy / RunFolder.CHECKPOINT, err)
