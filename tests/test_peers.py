"""The peer policies of the converged study: depth-scaled fixed steps, LayerScale, frozen profiles."""
import json

import pytest
import torch

import tscnet
from tscnet.cli import main
from tscnet.models import cifar_resnet
from tscnet.stepping import parse_policy
from tscnet.stepping.policies import layerscale_init
from tscnet.stepping.profile import profile_dict
from tscnet.train import read_metrics
from tscnet.train.optim import build_optimizer

from conftest import sample_batch
from stepping_utils import assert_compiles_like_eager, randomize_bn, randomize_steps, rel_err

QUICK = ["--data", "fashion-mnist", "--model", "cifar_resnet8", "--no-progress", "--train-subset", "256",
         "--test-subset", "128", "--epochs", "1", "--batch-size", "64"]
SGD = {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.5}


def _random_profile(model_name: str, path, seed=0, **kwargs) -> list[torch.Tensor]:
    """A profile file of non-trivial steps (varying over blocks and channels) for ``model_name``."""
    g = torch.Generator().manual_seed(seed)
    model = tscnet.create_model(model_name, **kwargs)
    steps = [torch.rand(dt.shape, generator=g) * 1.6 + 0.2 for dt in tscnet.step_sizes(model)]
    path.write_text(json.dumps(profile_dict(steps, model_name, "test")))
    return steps


def test_new_policies_are_registered_and_round_trip():
    assert {"depth", "layerscale", "profile"} <= set(tscnet.policy_names())
    for text, name, options in [("depth:0.5", "depth", {"power": 0.5}), ("depth:1", "depth", {"power": 1.0}),
                                ("layerscale", "layerscale", {}), ("layerscale:1e-4", "layerscale", {"init": 1e-4}),
                                ("profile:runs/a,b=c:d", "profile", {"path": "runs/a,b=c:d"}),
                                ("profile:path=x.json", "profile", {"path": "x.json"})]:
        spec = parse_policy(text)
        assert (spec.name, spec.options) == (name, options), text
        assert parse_policy(str(spec)) == spec


@pytest.mark.parametrize("name, blocks", [("cifar_resnet20", 9), ("cifar_resnet56", 27)])
def test_depth_policy_is_d_to_the_minus_p_and_not_trained(name, blocks):
    for power in (0.5, 1.0):
        model = tscnet.create_model(name, steps=f"depth:{power:g}")
        steps = torch.cat(tscnet.step_sizes(model))
        torch.testing.assert_close(steps, torch.full_like(steps, blocks ** -power))
        assert not list(tscnet.get_policy(model).parameters())
    assert tscnet.evolution_time(tscnet.create_model(name, steps="depth:1")) == pytest.approx(1.0, rel=1e-6)
    assert tscnet.evolution_time(tscnet.create_model(name, steps="depth:0.5")) == pytest.approx(blocks ** 0.5, rel=1e-6)


def test_layerscale_init_follows_depth_as_published():
    assert [layerscale_init(d) for d in (1, 9, 18, 19, 24, 25, 27, 54)] == [0.1, 0.1, 0.1, 1e-5, 1e-5, 1e-6, 1e-6, 1e-6]
    for depth, eps in [(20, 0.1), (38, 0.1), (44, 1e-5), (50, 1e-5), (56, 1e-6)]:  # D = 9, 18, 21, 24, 27
        model = tscnet.attach_steps(cifar_resnet(depth), "layerscale")
        policy = tscnet.get_policy(model)
        assert len(policy.sizes) == (depth - 2) // 2
        assert policy.dt.numel() == sum(policy.sizes)  # one free value per block and channel
        torch.testing.assert_close(policy.dt.detach(), torch.full_like(policy.dt, eps), rtol=0, atol=0)
    explicit = tscnet.get_policy(tscnet.create_model("cifar_resnet56", steps="layerscale:0.25"))
    assert float(explicit.dt.detach().min()) == float(explicit.dt.detach().max()) == 0.25


def test_layerscale_steps_train_without_weight_decay_and_other_policies_keep_it():
    model = tscnet.create_model("cifar_resnet8", steps="layerscale")
    optimizer = build_optimizer(model, SGD)
    policy = tscnet.get_policy(model)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    assert [id(p) for p in optimizer.param_groups[1]["params"]] == [id(policy.dt)]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    # With zero gradients only weight decay moves parameters: the steps stay, the weights shrink.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    dt, conv = policy.dt.detach().clone(), policy.branches[0].last_layer.weight.detach().clone()
    optimizer.step()
    assert torch.equal(policy.dt.detach(), dt)
    assert not torch.equal(policy.branches[0].last_layer.weight.detach(), conv)
    for steps in ("channel:0.1", "tsc", "none"):
        groups = build_optimizer(tscnet.create_model("cifar_resnet8", steps=steps), SGD).param_groups
        assert len(groups) == 1 and groups[0]["weight_decay"] == 0.5


@pytest.mark.slow
def test_profile_policy_loads_a_file_or_run_folder_exactly_and_freezes_it(tmp_path):
    steps = _random_profile("cifar_resnet20", tmp_path / "steps.json")
    for source in (tmp_path / "steps.json", tmp_path):  # the file, or the run folder holding it
        model = tscnet.create_model("cifar_resnet20", steps=f"profile:{source}")
        policy = tscnet.get_policy(model)
        assert not list(policy.parameters())
        assert "layer1.0.bn2.step_policy.dt" in model.state_dict()  # checkpoints keep the steps they trained with
        for got, want in zip(tscnet.step_sizes(model), steps):
            assert torch.equal(got, want)  # bit for bit: full float precision in the file


def test_profile_mismatches_and_bad_files_are_clear_errors(tmp_path):
    _random_profile("cifar_resnet20", tmp_path / "r20.json")
    with pytest.raises(ValueError, match="has 9 blocks, the model has 27 residual blocks"):
        tscnet.create_model("cifar_resnet56", steps=f"profile:{tmp_path / 'r20.json'}")
    profile = json.loads((tmp_path / "r20.json").read_text())
    profile["dt"][4] = profile["dt"][4][:-1]
    (tmp_path / "short.json").write_text(json.dumps(profile))
    with pytest.raises(ValueError, match="block 4 has 31 channels, the model's block 4 has 32"):
        tscnet.create_model("cifar_resnet20", steps=f"profile:{tmp_path / 'short.json'}")
    (tmp_path / "corrupt.json").write_text('{"dt": [[1.0, 0.5]')
    (tmp_path / "nan.json").write_text('{"dt": [[1.0, NaN]]}')
    (tmp_path / "empty").mkdir()
    for path, message in [(tmp_path / "corrupt.json", "not valid JSON"), (tmp_path / "nan.json", "not a finite number"),
                          (tmp_path / "missing.json", "neither a run folder nor a step profile file"),
                          (tmp_path / "empty", "has no steps.json")]:
        with pytest.raises(ValueError, match=message):
            tscnet.create_model("cifar_resnet20", steps=f"profile:{path}")
    with pytest.raises(ValueError, match="needs a path"):
        tscnet.create_model("cifar_resnet20", steps="profile")
    with pytest.raises(ValueError, match="finite"):
        tscnet.create_model("cifar_resnet20", steps="depth:inf")


@pytest.mark.slow
def test_every_run_saves_its_final_profile_and_profile_trains_with_it_frozen(tmp_path, capsys):
    first = tmp_path / "layerscale"
    assert main(["train", *QUICK, "--steps", "layerscale", "--out", str(first)]) == 0
    saved = json.loads((first / "steps.json").read_text())
    run = tscnet.train.load_run(first)
    assert saved["model"] == "cifar_resnet8" and saved["steps"] == "layerscale"
    for got, want in zip(saved["dt"], tscnet.step_sizes(run.model)):
        assert torch.equal(torch.tensor(got, dtype=torch.float32), want)
    assert saved["evolution_time"] == read_metrics(first)[-1]["evolution_time"]
    assert any(abs(v - 0.1) > 1e-6 for d in saved["dt"] for v in d)  # the steps did train
    assert json.loads((first / "model_card.json").read_text())["step_profile"] == "steps.json"
    # Transfer: a new run with that profile frozen, from the run folder.
    second = tmp_path / "transfer"
    assert main(["train", *QUICK, "--steps", f"profile:{first}", "--seed", "1", "--out", str(second)]) == 0
    assert json.loads((second / "steps.json").read_text())["dt"] == saved["dt"]
    assert main(["train", *QUICK, "--steps", f"profile:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "bad")]) == 2
    assert "neither a run folder nor a step profile file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------
# Fold and compile: the new policies behave like the existing ones.


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    for name, kwargs in [("cifar_resnet20", {"num_classes": 10}), ("resnet18", {"num_classes": 10}),
                         ("cifar_resnet8", {"in_chans": 1})]:
        _random_profile(name, folder / f"{name}.json", **kwargs)
    return folder


@pytest.mark.parametrize("policy", ["depth:0.5", "depth:1", "layerscale", "profile"])
@pytest.mark.parametrize("name", ["cifar_resnet20", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_new_policies_fold_exactly(name, policy, profiles):
    torch.manual_seed(0)
    spec = f"profile:{profiles / f'{name}.json'}" if policy == "profile" else policy
    model = tscnet.create_model(name, num_classes=10, steps=spec)
    randomize_bn(model)
    if policy == "layerscale":
        randomize_steps(model)
    model.eval()
    steps = torch.cat(tscnet.step_sizes(model))
    assert not torch.allclose(steps, torch.ones_like(steps))
    x = sample_batch("cifar10")[:4] if name.startswith("cifar") else sample_batch("imagenet", size=32)[:4]
    folded = tscnet.fold_steps(model)
    assert tscnet.get_policy(folded) is None
    tscnet.create_model(name, num_classes=10).load_state_dict(folded.state_dict(), strict=True)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["depth:0.5", "layerscale", "profile"])
def test_new_policies_compile_like_eager_without_recompiles(policy, profiles, one_thread):
    torch.manual_seed(0)
    spec = f"profile:{profiles / 'cifar_resnet8.json'}" if policy == "profile" else policy
    eager = tscnet.attach_steps(cifar_resnet(8, in_chans=1), spec)
    assert_compiles_like_eager(eager, lambda m: build_optimizer(m, {**SGD, "lr": 0.05, "weight_decay": 1e-4}),
                               sample_batch("fashionMNIST")[:16], torch.arange(16) % 10, steps=4)
