"""BPR-MF: matrix factorisation trained with the BPR pairwise loss.

Rendle, Freudenthaler, Gantner, Schmidt-Thieme. "BPR: Bayesian Personalized Ranking from Implicit
Feedback." UAI 2009.

Example:
    >>> model = BPRMF(BPRMFConfig.with_overrides({"embedding_dim": 8}), data)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import PositiveFloat, PositiveInt, NonNegativeFloat
from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models._private.losses import bpr_loss, l2_per_example
from ray_jobs.models.base import NEG, POS, USER, BatchKind

__all__ = ["BPRMF", "BPRMFConfig"]


class BPRMFConfig(ModelConfig):
    defaults_file = "bprmf.yaml"
    embedding_dim: PositiveInt
    init_std: PositiveFloat
    reg: NonNegativeFloat
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    batch_size: PositiveInt


class BPRMF(nn.Module):
    batch_kind: BatchKind = "pairwise"

    def __init__(self, config: BPRMFConfig, data: InteractionData):
        super().__init__()
        self.config = config
        self.user_emb = nn.Embedding(data.n_users, config.embedding_dim)
        self.item_emb = nn.Embedding(data.n_items, config.embedding_dim)
        nn.init.normal_(self.user_emb.weight, std=config.init_std)
        nn.init.normal_(self.item_emb.weight, std=config.init_std)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.user_emb(batch[USER])
        i, j = self.item_emb(batch[POS]), self.item_emb(batch[NEG])
        loss = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        return loss + self.config.reg * l2_per_example(u, i, j)

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_emb(batch[USER]) @ self.item_emb.weight.T

    def export_embeddings(self) -> dict[str, np.ndarray]:
        return {
            "user": self.user_emb.weight.detach().cpu().numpy(),
            "item": self.item_emb.weight.detach().cpu().numpy(),
        }

    def on_epoch_start(self, epoch: int) -> None:
        pass
