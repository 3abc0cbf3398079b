"""Deployment formats: the folded model is the vanilla one, so it exports like it.

* ONNX: ``torch.onnx.export`` of the folded model, run in onnxruntime, gives the stepped model's
  outputs (skipped when onnxruntime is not installed: ``pip install 'tscnet[test]'`` has it); the
  stepped model exports too, its policy computed in the graph.
* ``torch.export``: the stepped model (training graph and all) and the folded one.
* TorchScript (deprecated upstream): the folded model scripts; a stepped one is refused in one
  line (tests/test_backbones.py).
"""
from __future__ import annotations

import warnings

import pytest
import torch

import tscnet

from conftest import sample_batch
from stepping_utils import randomize_bn, randomize_steps, rel_err


def _stepped(name: str, policy: str = "tsc", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tscnet.create_model(name, num_classes=10, steps=policy, **kwargs)
    randomize_bn(model)
    randomize_steps(model)
    return model.eval()


def _onnxruntime_outputs(path, x: torch.Tensor):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_folded_model_runs_in_onnxruntime_torchscript_exporter(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _stepped("cifar_resnet20")
    folded = tscnet.fold_steps(model).eval()
    x = sample_batch("cifar10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, fast and still there
        torch.onnx.export(folded, (x[:2],), tmp_path / "m.onnx", dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    with torch.no_grad():
        assert rel_err(_onnxruntime_outputs(tmp_path / "m.onnx", x), model(x)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar_resnet20", "seresnet18", "tv:resnet18", "cifar_preact_resnet20"])
def test_folded_model_runs_in_onnxruntime(name, tmp_path):
    """The default (dynamo) exporter, with a dynamic batch size; SE gates folded too."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _stepped(name)
    folded = tscnet.fold_steps(model).eval()
    x = sample_batch("cifar10")
    torch.onnx.export(folded, (x[:2],), tmp_path / "m.onnx", dynamic_shapes=({0: "batch"},))
    with torch.no_grad():
        assert rel_err(_onnxruntime_outputs(tmp_path / "m.onnx", x), model(x)) < 1e-5


@pytest.mark.parametrize("dynamo, name, policy, kwargs", [
    (False, "cifar_resnet20", "tsc", {}),  # BN sites: γ and β scaled in one multi-tensor op in eager
    pytest.param(True, "cifar_resnet20", "tsc:dt_init=depth:0.5,summary=l2_sn", {"norm": "none"},
                 marks=pytest.mark.slow),  # conv sites, the controller fed with power-iteration norms
    pytest.param(True, "tv:resnet18", "tsc", {}, marks=pytest.mark.slow)])
def test_stepped_model_runs_in_onnxruntime(dynamo, name, policy, kwargs, tmp_path):
    """Unfolded, with its step policy in the graph: ONNX has no multi-tensor operator, so under
    export the steps scale their sites one tensor at a time."""
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    model = _stepped(name, policy, **kwargs)
    x = sample_batch("cifar10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x[:2],), tmp_path / "m.onnx", dynamo=dynamo, input_names=["x"],
                          **({"dynamic_shapes": ({0: "batch"},)} if dynamo else {"dynamic_axes": {"x": {0: "batch"}}}))
    with torch.no_grad():
        assert rel_err(_onnxruntime_outputs(tmp_path / "m.onnx", x), model(x)) < 1e-5


@pytest.mark.parametrize("name, policy", [("cifar_resnet8", "tsc"),
                                          pytest.param("cifar_preact_resnet20", "channel", marks=pytest.mark.slow),
                                          pytest.param("seresnet18", "tsc", marks=pytest.mark.slow)])
def test_torch_export_of_the_stepped_and_the_folded_model(name, policy):
    model = _stepped(name, policy)
    x = sample_batch("cifar10")[:4]
    with torch.no_grad():
        want = model(x)
        for module in (model, tscnet.fold_steps(model).eval()):
            exported = torch.export.export(module, (x,))
            assert rel_err(exported.module()(x), want) < 1e-5


@pytest.mark.slow
def test_torch_export_of_the_training_graph_trains_the_policy():
    model = _stepped("cifar_resnet8", "tsc").train()
    x = sample_batch("cifar10")[:4]
    exported = torch.export.export(model, (x,)).module()  # holds the model's own parameters
    exported(x).square().mean().backward()
    grads = [p.grad for p in tscnet.get_policy(model).parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_folded_model_scripts_with_torchscript():
    model = _stepped("tv:resnet18")
    x = sample_batch("cifar10")[:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still works
        scripted = torch.jit.script(tscnet.fold_steps(model).eval())
    with torch.no_grad():
        assert rel_err(scripted(x), model(x)) < 1e-5
