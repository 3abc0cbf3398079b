"""tscnet in a hand-written training loop: the optimizer's parameter groups, and the warning when
the step parameters get gradients but never train (the optimizer was built before attach_steps)."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import tscnet
from tscnet.stepping import UntrainedStepsWarning, get_policy, param_groups

from conftest import sample_batch


def _train(model, optimizer, steps=5, micro_batches=1):
    x, y = sample_batch("cifar10")[:8], torch.arange(8) % 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            for _ in range(micro_batches):
                F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return [w for w in caught if issubclass(w.category, UntrainedStepsWarning)]


def _resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10, zero_init_last=False)


@pytest.mark.parametrize("policy", ["tsc", "channel"])
def test_an_optimizer_built_before_attach_steps_warns_once(policy, one_thread):
    model = _resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # too early: it never sees the policy
    tscnet.attach_steps(model, policy)
    caught = _train(model, optimizer, steps=6)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "did not change" in message and "after tscnet.attach_steps" in message


def test_frozen_step_parameters_warn(one_thread):
    model = tscnet.attach_steps(_resnet(), "tsc")
    policy_params = {id(p) for p in get_policy(model).parameters()}
    optimizer = torch.optim.SGD([{"params": [p for p in model.parameters() if id(p) not in policy_params]},
                                 {"params": list(get_policy(model).parameters()), "lr": 0.0}], lr=0.1)
    assert len(_train(model, optimizer)) == 1


@pytest.mark.parametrize("micro_batches", [1, 4])
def test_a_correct_loop_does_not_warn(micro_batches, one_thread):
    """Gradient accumulation over several backward passes per step is not taken for a stalled policy."""
    model = tscnet.attach_steps(_resnet(), "tsc")
    optimizer = torch.optim.SGD(param_groups(model, weight_decay=1e-4), lr=0.1)
    before = [p.detach().clone() for p in get_policy(model).parameters()]
    assert _train(model, optimizer, steps=4, micro_batches=micro_batches) == []
    assert any(not torch.equal(a, b) for a, b in zip(before, get_policy(model).parameters()))


def test_param_groups_follow_the_weight_decay_rules():
    model = tscnet.attach_steps(_resnet(), "layerscale")
    dt = get_policy(model).dt
    groups = param_groups(model, weight_decay=1e-4)  # tscnet's rule: every parameter, layerscale's own 0
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 1e-4]
    assert [g["weight_decay"] for g in groups if any(p is dt for p in g["params"])] == [0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    model = tscnet.attach_steps(_resnet(), "tsc")
    timm_groups = param_groups(model, weight_decay=0.05, rule="timm")
    decay = {id(p): g["weight_decay"] for g in timm_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decay[id(p)] == (0.0 if p.ndim <= 1 or name.endswith(".bias") else 0.05), name
    # timm's own optimizer factory groups the stepped model the same way
    from timm.optim import create_optimizer_v2

    factory = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    assert {id(p): g["weight_decay"] for g in factory.param_groups for p in g["params"]} == decay
    with pytest.raises(ValueError, match="unknown weight-decay rule"):
        param_groups(model, 0.05, rule="sgd")
