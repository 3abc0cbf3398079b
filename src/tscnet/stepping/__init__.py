"""Step sizes on residual branches: sites, policies, controllers, attach and fold."""

from . import (
    controllers,  # noqa: F401  (registers the "mlp" and "tsc" policies)
    linear_branches,  # noqa: F401  (registers the ViT, CaiT and ConvNeXt blocks)
)
from .attach import (
    attach_steps,
    branches_of,
    convert_sync_batchnorm,
    evolution_time,
    get_policies,
    get_policy,
    policy_name,
    replace_steps,
    step_sizes,
)
from .branches import BLOCK_TYPES, BlockType, Branch, find_branches, register_block, supported_blocks
from .fold import GATE_FOLDERS, fold_steps, register_gate, unfold_steps
from .param_groups import WEIGHT_DECAY_RULES, param_groups, weight_decay_rule
from .policies import (
    POLICY_CLASSES,
    PolicySpec,
    StepPolicy,
    build_policy,
    is_stock,
    parse_policy,
    policy_class,
    policy_names,
    register_policy,
)
from .watch import UntrainedStepsWarning

__all__ = [
    "BLOCK_TYPES",
    "BlockType",
    "GATE_FOLDERS",
    "POLICY_CLASSES",
    "policy_class",
    "is_stock",
    "Branch",
    "PolicySpec",
    "StepPolicy",
    "UntrainedStepsWarning",
    "WEIGHT_DECAY_RULES",
    "attach_steps",
    "branches_of",
    "build_policy",
    "convert_sync_batchnorm",
    "evolution_time",
    "find_branches",
    "fold_steps",
    "get_policies",
    "get_policy",
    "parse_policy",
    "policy_name",
    "policy_names",
    "register_block",
    "register_gate",
    "register_policy",
    "replace_steps",
    "step_sizes",
    "supported_blocks",
    "unfold_steps",
    "param_groups",
    "weight_decay_rule",
]
