"""CrossCBR: bundle recommendation with cross-view contrastive learning.

Ma, He, Zhang, Wang, Chua. "CrossCBR: Cross-view Contrastive Learning for Bundle Recommendation."
KDD 2022. Two views of users and bundles: the bundle-level view propagates over the user-bundle
graph; the item-level view propagates over the user-item graph and mean-pools item embeddings into
bundles through the bundle-item graph (Sec. 3.1). The score sums both views' dot products (Eq. 7);
the loss is BPR plus lambda_1 times the InfoNCE loss aligning each user's (and each bundle's) two
views against the other users (bundles) in the batch (Eq. 8-10). Graph augmentation is edge dropout,
resampled every epoch; evaluation uses the full graphs.

Differences from the official code, on purpose: an edge is dropped in both directions at once
(the code drops the two directed copies independently).

Example:
    >>> model = CrossCBR(CrossCBRConfig.with_overrides(), load_youshu())  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from ray_jobs.data.dataset import InteractionData
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models._private.distributed import gather_rows
from ray_jobs.models._private.graph import (
    SparseMatrix,
    bipartite_laplacian,
    drop_edges,
    row_mean,
    unique_edges,
)
from ray_jobs.models._private.losses import bpr_loss
from ray_jobs.models.base import NEG, POS, USER, BatchKind

__all__ = ["CrossCBR", "CrossCBRConfig"]


class CrossCBRConfig(ModelConfig):
    defaults_file = "crosscbr.yaml"
    embedding_dim: PositiveInt
    n_layers: NonNegativeInt
    item_level_ratio: float = Field(ge=0.0, lt=1.0)
    bundle_level_ratio: float = Field(ge=0.0, lt=1.0)
    bundle_agg_ratio: float = Field(ge=0.0, lt=1.0)
    c_lambda: NonNegativeFloat
    c_temp: PositiveFloat
    lr: PositiveFloat
    weight_decay: NonNegativeFloat
    batch_size: PositiveInt
    seed: int = 0  # seeds the per-epoch edge dropout, identical on every worker


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row ``k`` of ``a`` should match row ``k`` of ``b`` (Eq. 8)."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


class CrossCBR(nn.Module):
    batch_kind: BatchKind = "pairwise"

    def __init__(self, config: CrossCBRConfig, data: InteractionData):
        super().__init__()
        if data.bundles is None:
            raise ValueError("CrossCBR needs bundle data (InteractionData.bundles)")
        self.config = config
        self.n_users, self.n_bundles = data.n_users, data.n_items
        self.n_items = data.bundles.n_atomic_items
        d = config.embedding_dim
        self.users = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d)))
        self.bundles = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_bundles, d)))
        self.items = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, d)))
        self._ui = unique_edges(data.bundles.user_item)
        self._ub = unique_edges(data.train)
        self._bi = unique_edges(data.bundles.bundle_item)
        # Full graphs for evaluation; the *_aug copies are re-drawn each training epoch.
        self.item_graph = SparseMatrix(bipartite_laplacian(self._ui, self.n_users, self.n_items))
        self.bundle_graph = SparseMatrix(bipartite_laplacian(self._ub, self.n_users, self.n_bundles))
        self.agg_graph = SparseMatrix(row_mean(self._bi, self.n_bundles, self.n_items))
        self.item_graph_aug = SparseMatrix(bipartite_laplacian(self._ui, self.n_users, self.n_items))
        self.bundle_graph_aug = SparseMatrix(bipartite_laplacian(self._ub, self.n_users, self.n_bundles))
        self.agg_graph_aug = SparseMatrix(row_mean(self._bi, self.n_bundles, self.n_items))
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_epoch_start(self, epoch: int) -> None:
        """Edge dropout (the official ``aug_type: ED``), seeded by epoch so workers agree."""
        c = self.config
        rng = np.random.default_rng([c.seed, epoch])
        self.item_graph_aug.replace(
            bipartite_laplacian(drop_edges(self._ui, c.item_level_ratio, rng), self.n_users, self.n_items)
        )
        self.bundle_graph_aug.replace(
            bipartite_laplacian(drop_edges(self._ub, c.bundle_level_ratio, rng), self.n_users, self.n_bundles)
        )
        self.agg_graph_aug.replace(
            row_mean(drop_edges(self._bi, c.bundle_agg_ratio, rng), self.n_bundles, self.n_items)
        )
        self._cache = None

    def _propagate(self, graph: SparseMatrix, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The official propagation: layer k is divided by (k + 1) and L2-normalised, layers summed.
        x = torch.cat([a, b])
        layers = [x]
        for k in range(self.config.n_layers):
            x = graph(x) / (k + 2)
            layers.append(F.normalize(x, dim=1))
        out = torch.stack(layers).sum(dim=0)
        return out[: len(a)], out[len(a) :]

    def views(self, augmented: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(users_IL, bundles_IL, users_BL, bundles_BL)`` representations."""
        ig = self.item_graph_aug if augmented else self.item_graph
        bg = self.bundle_graph_aug if augmented else self.bundle_graph
        ag = self.agg_graph_aug if augmented else self.agg_graph
        users_il, items_il = self._propagate(ig, self.users, self.items)
        bundles_il = ag(items_il)
        users_bl, bundles_bl = self._propagate(bg, self.users, self.bundles)
        return users_il, bundles_il, users_bl, bundles_bl

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u_il, b_il, u_bl, b_bl = self.views(augmented=True)
        u, pos, neg = batch[USER], batch[POS], batch[NEG]
        pos_score = (u_il[u] * b_il[pos]).sum(-1) + (u_bl[u] * b_bl[pos]).sum(-1)
        neg_score = (u_il[u] * b_il[neg]).sum(-1) + (u_bl[u] * b_bl[neg]).sum(-1)
        # In-batch negatives come from the global batch, also when DDP splits it across workers.
        t = self.config.c_temp
        c_loss = 0.5 * (
            info_nce(gather_rows(u_il[u]), gather_rows(u_bl[u]), t)
            + info_nce(gather_rows(b_il[pos]), gather_rows(b_bl[pos]), t)
        )
        return bpr_loss(pos_score, neg_score) + self.config.c_lambda * c_loss

    def train(self, mode: bool = True) -> "CrossCBR":
        self._cache = None
        return super().train(mode)

    @torch.no_grad()
    def _final(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Retrieval vectors: ``[IL; BL]`` concatenation, so one dot product equals Eq. 7."""
        if self._cache is None:
            u_il, b_il, u_bl, b_bl = self.views(augmented=False)
            self._cache = (torch.cat([u_il, u_bl], dim=1), torch.cat([b_il, b_bl], dim=1))
        return self._cache

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, bundles = self._final()
        return users[batch[USER]] @ bundles.T

    def export_embeddings(self) -> dict[str, np.ndarray]:
        users, bundles = self._final()
        with torch.no_grad():
            _, items = self._propagate(self.item_graph, self.users, self.items)
        return {"user": users.cpu().numpy(), "bundle": bundles.cpu().numpy(), "item": items.cpu().numpy()}
