"""Shared test helper: two run folders that ended in the same state."""
import torch

from tscnet.train import read_metrics


def assert_same_run(a, b) -> None:
    """Bit-identical final weights and identical metrics (timings aside) in run folders ``a`` and ``b``."""
    sa, sb = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (a, b))
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s")} for r in rows]
    assert strip(read_metrics(a)) == strip(read_metrics(b))
