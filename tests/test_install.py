"""tscnet installed like a library: a wheel built from the sources, installed into a fresh virtual
environment, runs from a folder outside the repository (recipes ship as package data)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*command, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_runs_demo_and_every_recipe_from_another_folder(tmp_path):
    pytest.importorskip("setuptools")
    # Build from a copy of the sources, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "results", "runs", ".pytest_cache"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source,
         cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("tscnet-*.whl"))
    # A fresh environment; torch & co. come from the system's site-packages (no download), tscnet
    # only from the wheel (--ignore-installed: a development install there is not used).
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python, tscnet = env_dir / "bin" / "python", env_dir / "bin" / "tscnet"
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel, cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(python, "-c", "import tscnet; print(tscnet.__file__)", cwd=outside).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where  # the wheel's copy, not the checkout

    assert "demo" in _run(tscnet, "demo", "--help", cwd=outside).stdout
    # Every shipped recipe resolves and validates by name; a short run trains from one of them.
    names = _run(python, "-c", "from tscnet.train.config import CONFIG_DIR, load_config\n"
                               "names = sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))\n"
                               "[load_config(n) for n in names]\n"
                               "print(' '.join(names + sorted('studies/' + p.name for p in CONFIG_DIR.glob('studies/*.yaml'))))",
                 cwd=outside).stdout.split()
    configs = REPO / "src" / "tscnet" / "configs"
    shipped = sorted(p.stem for p in configs.glob("*.yaml")) + sorted(f"studies/{p.name}" for p in configs.glob("studies/*.yaml"))
    assert names == shipped and "fashion_mnist_demo" in names
    _run(tscnet, "train", "--config", "fashion_mnist_demo", "--model", "cifar_resnet8", "--steps", "tsc", "--epochs",
         "1", "--train-subset", "64", "--test-subset", "64", "--batch-size", "32", "--no-progress", "--out", "run",
         cwd=outside)
    assert (outside / "run" / "model.safetensors").is_file() and (outside / "run" / "steps.json").is_file()
    assert not any(outside.glob("*.yaml"))  # nothing copied next to the run: the recipe came from the package
