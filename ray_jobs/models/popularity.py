"""Most-popular baseline: the same ranking (training interaction counts) for every user.

The floor every personalised model must beat.

Example:
    >>> model = Popularity(PopularityConfig.with_overrides(), data)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models.base import SEQ, USER, BatchKind

__all__ = ["Popularity", "PopularityConfig"]


class PopularityConfig(ModelConfig):
    defaults_file = "popularity.yaml"


class Popularity(nn.Module):
    batch_kind: BatchKind = "none"

    def __init__(self, config: PopularityConfig, data: InteractionData):
        super().__init__()
        self.config = config
        self.n_items = data.n_items
        counts = torch.from_numpy(data.item_counts().astype(np.float32))
        self.register_buffer("counts", counts)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("Popularity has nothing to train")

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = batch[USER] if USER in batch else batch[SEQ]
        return self.get_buffer("counts").unsqueeze(0).expand(rows.shape[0], -1).clone()

    def export_embeddings(self) -> dict[str, np.ndarray]:
        return {"item_popularity": self.get_buffer("counts").cpu().numpy()[:, None].astype(np.float32)}

    def on_epoch_start(self, epoch: int) -> None:
        pass
