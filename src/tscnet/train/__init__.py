"""Training: recipes (config), the engine (fit), the run folder (checkpoints, metrics)."""

from .config import DEFAULTS, load_config
from .engine import TrainingDiverged, fit
from .metrics import evaluate
from .run import Run, load_checkpoint, load_run, read_metrics

__all__ = [
    "DEFAULTS",
    "Run",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_config",
    "load_run",
    "read_metrics",
]
