"""Folded timm-family runs as timm model folders: what timm.create_model("local-dir:...") loads."""
import json

import pytest
import timm
import torch

import tscnet
from tscnet.cli import main
from tscnet.hub import save_timm_folder
from tscnet.train import load_run

from conftest import sample_batch
from stepping_utils import randomize_bn, randomize_steps, rel_err

TINY = ["--data", "fashion-mnist", "--train-subset", "32", "--test-subset", "32", "--batch-size", "32",
        "--epochs", "1", "--no-progress"]


@pytest.mark.slow
def test_fold_writes_a_timm_folder_that_timm_loads_with_the_same_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--model", "seresnet18", "--steps", "tsc", "--out", str(run)]) == 0
    folder = tmp_path / "hub"
    assert main(["fold", str(run), "--timm-dir", str(folder)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "model_card.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "seresnet18" and config["num_classes"] == 10
    info = tscnet.data.registry.get_dataset_spec("fashion-mnist").info
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert config["pretrained_cfg"]["mean"] == pytest.approx(list(info.mean))

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # no tscnet involved
    stepped = load_run(run).model.eval()
    assert tscnet.get_policy(stepped) is not None
    x = sample_batch("fashionMNIST")
    with torch.no_grad():
        assert rel_err(loaded(x), stepped(x)) < 1e-5
    assert timm.data.resolve_data_config(model=loaded)["mean"] == pytest.approx(tuple(info.mean))

    # Never overwritten; a model that is not timm's is refused with one line.
    assert main(["fold", str(run), "--timm-dir", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    cifar = tmp_path / "cifar"
    assert main(["train", *TINY, "--model", "cifar_resnet8", "--steps", "tsc", "--out", str(cifar)]) == 0
    capsys.readouterr()
    assert main(["fold", str(cifar), "--timm-dir", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "timm-family" in err and not (tmp_path / "no").exists()


def test_save_timm_folder_from_python(tmp_path):
    torch.manual_seed(0)
    model = tscnet.create_model("resnet18", num_classes=7, steps="channel")
    randomize_bn(model)
    randomize_steps(model)
    save_timm_folder(model, tmp_path / "r18", data_config={"input_size": (3, 32, 32)})
    loaded = timm.create_model(f"local-dir:{tmp_path / 'r18'}", pretrained=True).eval()
    x = sample_batch("cifar10")[:4]
    with torch.no_grad():
        assert rel_err(loaded(x), model.eval()(x)) < 1e-5
    with pytest.raises(ValueError, match="not an empty folder"):
        save_timm_folder(model, tmp_path / "r18")
    with pytest.raises(ValueError, match="timm architectures"):
        save_timm_folder(tscnet.create_model("tv:resnet18", steps="tsc"), tmp_path / "tv")
