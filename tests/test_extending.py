"""Extension points (docs/design.md, "Extension points"): the worked examples run as written, a
policy's facts live on its class, and ``register_policy`` keeps its call signature.

Every test restores the registries it adds to, so a toy block or policy never leaks into the
other tests of the session (``tscnet list policies`` is checked against ``policy_names()``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import tscnet
from tscnet.analysis.lipschitz import block_ops, register_block_ops
from tscnet.registry import qualname
from tscnet.stepping import (
    BLOCK_TYPES,
    GATE_FOLDERS,
    POLICY_CLASSES,
    Branch,
    StepPolicy,
    is_stock,
    parse_policy,
    policy_class,
    policy_names,
    register_block,
    register_policy,
)
from tscnet.stepping.controllers import LSTMController
from tscnet.stepping.policies import FixedSteps, NoSteps

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


@pytest.fixture(autouse=True)
def restore_registries():
    saved = [(registry, dict(registry)) for registry in (POLICY_CLASSES, BLOCK_TYPES, GATE_FOLDERS)]
    yield
    for registry, entries in saved:
        registry.clear()
        registry.update(entries)


def section_code(heading: str) -> list[str]:
    """The ```python blocks of design.md's section ``heading``, up to the next heading (outside code)."""
    blocks: list[list[str]] = []
    inside = fenced = collecting = False
    for line in DESIGN.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            collecting = inside and fenced and line == "```python"
            if collecting:
                blocks.append([])
        elif collecting:
            blocks[-1].append(line)
        elif not fenced and line.startswith("#"):
            inside = line == f"### {heading}"
    return ["\n".join(b) + "\n" for b in blocks]


@pytest.mark.parametrize("heading", ["Adding a block type", "Adding a step policy"])
def test_the_design_doc_examples_run_as_written(heading, capsys):
    blocks = section_code(heading)
    assert blocks, f"no python block under '### {heading}' in docs/design.md"
    for code in blocks:
        exec(compile(code, f"docs/design.md ({heading})", "exec"), {"__name__": "design_example"})
    if heading == "Adding a block type":
        assert "mean Δt per block:" in capsys.readouterr().out


def test_the_toy_block_is_one_registration_with_its_no_bound_reason():
    namespace = {"__name__": "design_example"}
    exec(compile(section_code("Adding a block type")[0], "design.md", "exec"), namespace)
    block = namespace["ToyBlock"](4)
    kind = BLOCK_TYPES[qualname(block)]
    assert kind.branches is namespace["toy_branches"] and kind.block_ops is None
    assert qualname(block) in tscnet.stepping.supported_blocks()
    with pytest.raises(ValueError, match="no Lipschitz bound for ToyBlock blocks: the stability bound's segments"):
        block_ops(block)


def test_a_bound_rule_given_at_registration_is_the_one_the_bound_uses():
    class Bounded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

    rule = lambda block: ("segments of", block)  # noqa: E731 (stepping stores it, analysis calls it)
    register_block(qualname(Bounded), block_ops=rule)(lambda block: Branch(block, "conv", None, site="conv",
                                                                           site_attr="conv"))
    block = Bounded()
    assert block_ops(block) == ("segments of", block)


def test_register_block_ops_attaches_to_registered_types_only():
    with pytest.raises(ValueError, match="no block type pkg.Unknown to attach a Lipschitz bound to"):
        register_block_ops("pkg.Unknown")(lambda block: None)
    basic = BLOCK_TYPES["tscnet.models.cifar_resnet.BasicBlock"]
    assert basic.block_ops is not None and basic.no_bound is None  # analysis attached the built-in rule
    assert "self-attention has no global Lipschitz constant" in BLOCK_TYPES["timm.models.vision_transformer.Block"].no_bound


@pytest.mark.parametrize("spec, learned, controller, constant", [
    ("none", False, False, True), ("fixed:0.5", False, False, True), ("depth:1", False, False, True),
    ("scalar:0", True, False, False), ("channel", True, False, False), ("layerscale", True, False, False),
    ("profile:RUN", False, False, False), ("mlp", True, True, False), ("tsc:dt_init=0.5", True, True, False),
    (parse_policy("tsc:hidden=8"), True, True, False), ({"name": "fixed", "value": 2}, False, False, True),
    (None, False, False, True),
])
def test_a_policys_facts_live_on_its_class(spec, learned, controller, constant):
    cls = policy_class(spec)
    assert (cls.learned, cls.controller, cls.constant) == (learned, controller, constant)
    assert issubclass(cls, StepPolicy)
    stock = spec is None or spec == "none"  # the one policy that leaves the stock model
    assert cls.attaches is not stock and is_stock(spec) is stock


def test_a_policy_registered_elsewhere_is_not_taken_for_the_stock_model():
    assert not is_stock("my_own_policy:value=2")  # a training script's own policy attaches steps


def test_policy_class_refuses_an_unknown_name_as_parse_policy_does():
    for bad in ("tscc", "tscc:hidden=3"):
        with pytest.raises(ValueError, match="unknown step policy 'tscc' \\(did you mean tsc"):
            policy_class(bad)
    assert policy_class("layerscale").weight_decay == 0.0 and policy_class("tsc").weight_decay is None


def test_built_policies_are_instances_of_their_class():
    for name in policy_names():
        if name == "profile":  # needs a file
            continue
        model = tscnet.create_model("cifar_resnet8", num_classes=10, steps=name)
        policy = tscnet.get_policy(model)
        assert (policy is None) if name == "none" else type(policy) is policy_class(name), name


def test_register_policy_keeps_its_call_signature():
    # a class with other options than its own: a subclass declares them, the object built is the class's
    options = {"hidden": int, "dt_max": float, "dt_min": float, "dt_init": float, "summary": str, "feedback": str}
    cls = register_policy("tsc2", LSTMController, **options)
    assert POLICY_CLASSES["tsc2"] is cls and issubclass(cls, LSTMController) and cls.controller
    assert cls.options == options and cls.positional is None and LSTMController.options != options
    spec = parse_policy("tsc2:hidden=8,dt_init=0.5")
    assert spec.options == {"hidden": 8, "dt_init": 0.5}
    model = tscnet.create_model("cifar_resnet8", num_classes=10, steps=spec)
    assert type(tscnet.get_policy(model)) is LSTMController  # built by the factory, as before
    # a class that declares exactly these options is registered as it is
    assert register_policy("fixed2", FixedSteps, positional="value", value=float) is FixedSteps
    assert parse_policy("fixed2:0.25").options == {"value": 0.25} and str(parse_policy("fixed2:0.25")) == "fixed2:0.25"
    # a plain callable, with a positional option
    half = register_policy("half", lambda branches, init=1.0: FixedSteps(branches, init / 2), positional="init",
                           init=float)
    assert parse_policy("half:3").options == {"init": 3.0} and not half.learned
    policy = tscnet.get_policy(tscnet.create_model("cifar_resnet8", num_classes=10, steps="half:3"))
    assert type(policy) is FixedSteps and policy.value == 1.5
    # None: a policy that attaches nothing, like none
    assert issubclass(register_policy("off", None), NoSteps)
    model = tscnet.create_model("cifar_resnet8", num_classes=10, steps="off")
    assert tscnet.get_policy(model) is None
    assert policy_names()[-4:] == ["tsc2", "fixed2", "half", "off"]  # registration order
