"""The main job, end to end on real Fashion-MNIST (tiny settings), and the command line itself."""
import subprocess
import sys

from tscnet.cli import main


def test_demo_trains_both_policies_and_writes_table_and_curves(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--model", "cifar_resnet8", "--epochs", "1", "--train-subset", "512",
                 "--test-subset", "500", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "none" in printed and "tsc" in printed
    assert (out / "cifar_resnet8-none" / "model_card.json").exists()
    assert (out / "cifar_resnet8-tsc" / "model_card.json").exists()
    assert (out / "report.md").exists() and (out / "training_curves.png").stat().st_size > 10_000
    # a second demo never writes over the first
    assert main(["demo", "--out", str(out), "--model", "cifar_resnet8", "--epochs", "1", "--train-subset", "256",
                 "--test-subset", "256", "--no-progress", "--policies", "none"]) == 0
    assert (tmp_path / "demo-2" / "cifar_resnet8-none" / "metrics.jsonl").exists()


def test_demo_refuses_a_bad_policy_before_training(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--policies", "none", "tcs"]) == 2
    assert "tsc" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_console_entry_point_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "tscnet.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "train", "eval", "fold", "ode", "stability", "report"):
        assert command in result.stdout
