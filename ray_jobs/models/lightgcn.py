"""LightGCN: linear propagation over the normalised user-item graph, mean over layers, BPR loss.

He, Deng, Wang, Li, Zhang, Wang. "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation." SIGIR 2020. Eq. 7 (propagation with ``D^-1/2 A D^-1/2``), Eq. 4 (layer combination
with alpha_k = 1 / (K + 1)), Eq. 15 (BPR with L2 on the layer-0 embeddings).

Example:
    >>> model = LightGCN(LightGCNConfig.with_overrides({"n_layers": 2}), data)  # doctest: +SKIP
    >>> scores = model.score({USER: torch.tensor([0, 1])})  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models._private.graph import SparseMatrix, bipartite_laplacian, unique_edges
from ray_jobs.models._private.losses import bpr_loss, l2_per_example
from ray_jobs.models.base import NEG, POS, USER, BatchKind

__all__ = ["LightGCN", "LightGCNConfig"]


class LightGCNConfig(ModelConfig):
    defaults_file = "lightgcn.yaml"
    embedding_dim: PositiveInt
    n_layers: NonNegativeInt
    init_std: PositiveFloat
    reg: NonNegativeFloat
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    batch_size: PositiveInt


class LightGCN(nn.Module):
    batch_kind: BatchKind = "pairwise"

    def __init__(self, config: LightGCNConfig, data: InteractionData):
        super().__init__()
        self.config = config
        self.n_users, self.n_items = data.n_users, data.n_items
        self.user_emb = nn.Embedding(data.n_users, config.embedding_dim)
        self.item_emb = nn.Embedding(data.n_items, config.embedding_dim)
        nn.init.normal_(self.user_emb.weight, std=config.init_std)
        nn.init.normal_(self.item_emb.weight, std=config.init_std)
        self.graph = SparseMatrix(bipartite_laplacian(unique_edges(data.train), self.n_users, self.n_items))
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # eval-time propagation

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings: the mean of layers 0..K (Eq. 4)."""
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])
        layers = [x]
        for _ in range(self.config.n_layers):
            x = self.graph(x)
            layers.append(x)
        out = torch.stack(layers).mean(dim=0)
        return out[: self.n_users], out[self.n_users :]

    def train(self, mode: bool = True) -> "LightGCN":
        self._cache = None  # weights change in training; eval() starts from a fresh propagation
        return super().train(mode)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items = self.propagate()
        u, i, j = users[batch[USER]], items[batch[POS]], items[batch[NEG]]
        loss = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        reg = l2_per_example(self.user_emb(batch[USER]), self.item_emb(batch[POS]), self.item_emb(batch[NEG]))
        return loss + self.config.reg * reg

    @torch.no_grad()
    def _final(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Scoring many user batches reuses one propagation; training invalidates it.
        if self._cache is None:
            self._cache = self.propagate()
        return self._cache

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items = self._final()
        return users[batch[USER]] @ items.T

    def export_embeddings(self) -> dict[str, np.ndarray]:
        users, items = self._final()
        return {"user": users.cpu().numpy(), "item": items.cpu().numpy()}

    def on_epoch_start(self, epoch: int) -> None:
        self._cache = None
