"""A warning for the silent trap of hand-written training loops: step parameters that never train.

Build the optimizer before :func:`~tscnet.stepping.attach.attach_steps` (or leave the policy's
parameters out of it, or give them learning rate 0) and the controller's parameters receive
gradients but never change: the run is the vanilla model with extra work, and nothing says so.

:func:`watch_training` hooks each learned parameter of a policy
(``register_post_accumulate_grad_hook``: autograd runs it after accumulating the gradient, outside
the forward, so ``torch.compile`` sees nothing). At each backward pass it compares, with their
values at attach time, the policy's parameters and one weight of the network (the first branch's
last layer). The network's weight moving while the policy's parameters, which did receive
nonzero gradients, stay put for :data:`CHECKS` backward passes means an optimizer that trains
the network but not the steps: it warns once, in plain words. Then, or as soon as a policy
parameter moves, the hooks remove themselves: no cost after the first steps. Gradient
accumulation over several backward passes is no false alarm: nothing moves until the step, and
then both do.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .policies import StepPolicy

#: Backward passes after the network's first update in which the steps must have moved too.
CHECKS = 2


class UntrainedStepsWarning(UserWarning):
    """The step policy's learned parameters get gradients but do not change while the network does."""


class _Watch:
    def __init__(self, policy: nn.Module, params: list[nn.Parameter], network_weight: torch.Tensor) -> None:
        self.policy_name = type(policy).__name__
        self.params = params
        self.start = [p.detach().clone() for p in params]
        self.network_weight = network_weight
        self.network_start = network_weight.detach().clone()
        self.got_gradient = False
        self.stalled = 0  # backward passes that found the network updated and the steps not
        self.handles: list[RemovableHandle] | None = [
            p.register_post_accumulate_grad_hook(self._after_accumulate(i)) for i, p in enumerate(params)
        ]

    def _after_accumulate(self, index: int):
        def hook(param: torch.Tensor) -> None:
            if self.handles is None:
                return
            if param.grad is not None and bool(param.grad.any()):
                self.got_gradient = True
            if index == len(self.params) - 1:
                self._check()

        return hook

    def _check(self) -> None:
        if any(not torch.equal(p.detach(), s) for p, s in zip(self.params, self.start)):
            self.stop()  # the steps train
            return
        if self.got_gradient and not torch.equal(self.network_weight.detach(), self.network_start):
            self.stalled += 1
        if self.stalled >= CHECKS:
            self.stop()
            warnings.warn(
                f"the step policy's learned parameters ({self.policy_name}) receive gradients but did not "
                "change while the network's weights did: the model trains as if it had no step policy. "
                "Build the optimizer after tscnet.attach_steps(...) (e.g. from tscnet.param_groups(model, "
                "weight_decay)), and check the step parameters are not frozen (requires_grad, lr 0)",
                UntrainedStepsWarning,
                stacklevel=2,
            )

    def stop(self) -> None:
        for handle in self.handles or ():
            handle.remove()
        self.handles = None


def watch_training(policy: StepPolicy) -> None:
    """Warn once if ``policy``'s learned parameters get gradients but do not train while the network does."""
    old = policy.__dict__.get("_watch")
    if old is not None:
        old.stop()
    params = [p for p in policy.parameters() if p.requires_grad]
    network_weight = cast(torch.Tensor, policy.branches[0].last_layer.weight)
    watch = _Watch(policy, params, network_weight) if params else None
    policy.__dict__["_watch"] = watch


def stop_watching(model: nn.Module) -> None:
    """Remove the untrained-steps hooks of every policy in ``model`` (a measurement of a policy's
    steady cost, e.g. launch counts, must not count the first steps' check)."""
    for module in model.modules():
        watch = module.__dict__.get("_watch")
        if watch is not None:
            watch.stop()
