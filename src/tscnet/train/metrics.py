"""Classification metrics, computed in one place: summed on device, reduced across ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


class MetricSums:
    """Running sums of loss, top-1 and top-5 hits and sample count, kept on device (no sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, top-1 hits, top-5 hits
        self.count = 0  # on the host: no device op per batch

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        n = target.numel()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(target.unsqueeze(1))
        self.sums += torch.stack(
            [loss.detach().double() * n, hits[:, 0].sum().double(), hits.any(dim=1).sum().double()]
        )
        self.count += n

    def state(self) -> torch.Tensor:
        """``[loss·n, top-1 hits, top-5 hits, n]`` (float64), to save with a mid-epoch checkpoint."""
        return torch.cat([self.sums, self.sums.new_tensor([self.count])]).cpu()

    def load_state(self, state: torch.Tensor) -> None:
        self.sums = state[:3].to(self.sums)
        self.count = int(state[3])

    def loss_is_finite(self) -> bool:
        return bool(torch.isfinite(self.sums[0]))

    def reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            packed = self.state().to(self.sums.device)
            dist.all_reduce(packed)
            self.sums, self.count = packed[:3], int(packed[3].item())

    def compute(self, prefix: str = "") -> dict[str, float]:
        """``loss`` (mean), ``top1``/``top5`` in %."""
        loss, top1, top5 = self.sums.tolist()
        n = max(self.count, 1)
        return {f"{prefix}loss": loss / n, f"{prefix}top1": 100.0 * top1 / n, f"{prefix}top5": 100.0 * top5 / n}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    stop: Callable[[int], bool] | None = None,
) -> dict[str, float] | None:
    """Test loss, top-1 and top-5 (%) and error (%) of ``model`` over ``loader`` (all ranks).

    ``stop(k)`` is asked after each batch (``k`` batches done); when it says so the evaluation is
    abandoned and ``None`` returned (a signal: the training engine checkpoints and exits at once).
    """
    model.eval()
    sums = MetricSums(device)
    for k, (images, target) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        sums.update(logits, target, torch.nn.functional.cross_entropy(logits, target))
        if stop is not None and stop(k):
            return None
    sums.reduce()
    out = sums.compute("test_")
    out["test_error"] = 100.0 - out["test_top1"]
    return out


# A final test error at or above this fraction of chance level counts as a failed run (studies, reports).
CHANCE_FRACTION = 0.95


def chance_error(num_classes: int) -> float:
    """Chance-level test error: 100 − 100 / classes (%)."""
    return 100.0 - 100.0 / int(num_classes)


def last_test_error(rows: list[dict]) -> float | None:
    """The test error of the last evaluated epoch in metrics ``rows`` (``train.eval_epochs`` may skip
    some: their rows have no ``test_error``); ``None`` when no epoch was evaluated."""
    tested = [row for row in rows if "test_error" in row]
    return float(tested[-1]["test_error"]) if tested else None
