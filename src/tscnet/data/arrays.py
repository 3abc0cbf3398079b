"""An in-memory image set: one uint8 N×C×H×W tensor and its labels."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset"]


class ArrayDataset(Dataset):
    """Images (uint8 N×C×H×W, or N×H×W for gray) and int64 labels, as read from IDX/CIFAR files.

    Indexing returns ``(uint8 C×H×W tensor, int label)``; the tensor loader uses ``images`` and
    ``labels`` whole instead.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        images = torch.as_tensor(images)
        self.images = images.unsqueeze(1) if images.ndim == 3 else images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, index: torch.Tensor) -> ArrayDataset:
        """The samples at ``index``, in that order."""
        return ArrayDataset(self.images[index], self.labels[index])
