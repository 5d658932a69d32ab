"""GCE-GNN: a session graph and a global item-transition graph, each aggregated with attention.

Wang, Wei, Hu, Cao, Guo, Wen. "Global Context Enhanced Graph Neural Networks for Session-based
Recommendation." SIGIR 2020. Two views of each item of a session prefix:
- session level (Sec. 4.2.1): attention over the item's neighbours in the prefix's own graph, with
  a separate attention vector per relation (self, out, in, both ways);
- global level (Sec. 4.2.2): attention over its ``n_neighbors`` most frequent neighbours in the
  global graph of every training session (items within ``epsilon`` steps of each other in either
  direction), weighted by how much each neighbour matches the session (the mean item vector) and
  by the edge's frequency; the item's vector joined with that aggregate through a ReLU layer,
  with dropout.
The two are summed (Sec. 4.3); the session vector is a soft attention over the items with reversed
position embeddings (the last item has position 0) and the session's mean (Eq. 11-13); items are
scored by a dot product with it, trained with cross-entropy over every item on every prefix.

Ids as SASRec's and SR-GNN's: left-padded windows of ``item + 1`` (0 = padding), scores for items
``0..n_items-1``. The global graph is a buffer: it is saved with the weights and served with them.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from ray_jobs.data.dataset import user_histories
from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models.base import ItemCatalogue
from ray_jobs.models.srgnn import SessionGraphModel, session_graphs

__all__ = ["GCEGNN", "GCEGNNConfig", "global_neighbors", "relation_types"]

SELF, OUT, IN, BOTH = 1, 2, 3, 4  # relation of node j to node i in a session graph (0: none)


class GCEGNNConfig(ModelConfig):
    defaults_file = "gcegnn.yaml"
    max_len: PositiveInt
    hidden_dim: PositiveInt
    n_neighbors: PositiveInt
    epsilon: PositiveInt
    dropout_global: float = Field(ge=0.0, lt=1.0)
    leaky_slope: PositiveFloat
    lr: PositiveFloat
    lr_decay_every: PositiveInt | None = None
    lr_decay: float = Field(default=0.1, gt=0.0, le=1.0)
    weight_decay: NonNegativeFloat
    batch_size: PositiveInt
    windows: Literal["prefixes"] = "prefixes"

    def negatives_per_position(self) -> int:
        return 0


def global_neighbors(sessions: list[np.ndarray], n_items: int, epsilon: int, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """The global graph (Sec. 3.2): for each item, its ``n_neighbors`` most frequent neighbours,
    items within ``epsilon`` positions of it in a training session, either direction.

    Returns:
        ``(neighbors, weights)``, each ``(n_items + 1, n_neighbors)`` in SASRec ids (row 0 and
        missing neighbours: id 0, weight 0), neighbours by descending frequency, ties by id.
    """
    counts: list[Counter] = [Counter() for _ in range(n_items + 1)]
    for session in sessions:
        ids = np.asarray(session) + 1
        for k in range(1, epsilon + 1):
            for a, b in zip(ids[:-k].tolist(), ids[k:].tolist()):
                if a != b:
                    counts[a][b] += 1
                    counts[b][a] += 1
    neighbors = np.zeros((n_items + 1, n_neighbors), dtype=np.int64)
    weights = np.zeros((n_items + 1, n_neighbors), dtype=np.float32)
    for item, counter in enumerate(counts):
        top = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n_neighbors]
        if top:
            neighbors[item, : len(top)] = [n for n, _ in top]
            weights[item, : len(top)] = [w for _, w in top]
    return neighbors, weights


def relation_types(a_out: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` relation of node j to node i from the session graph's edges: self on the
    diagonal of real nodes, out (i -> j), in (j -> i), both, 0 for none."""
    edge = a_out > 0
    reverse = edge.transpose(1, 2)
    none = torch.zeros(edge.shape, dtype=torch.long, device=a_out.device)
    # where, not masked assignment: the exported user encoder needs ops without data-dependent shapes
    return torch.where(edge & reverse, BOTH, torch.where(edge, OUT, torch.where(reverse, IN, none)))


class _SessionAggregator(nn.Module):
    """Session-level item representation (Eq. 1-3): attention over the prefix graph's neighbours,
    scored per relation type."""

    def __init__(self, dim: int, slope: float):
        super().__init__()
        self.relation_vectors = nn.Parameter(torch.empty(BOTH + 1, dim))
        self.slope = slope

    def forward(self, hidden: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        pair = hidden.unsqueeze(2) * hidden.unsqueeze(1)  # (B, N, N, d): h_i * h_j
        scores = F.leaky_relu(torch.einsum("bijd,bijd->bij", pair, self.relation_vectors[kinds]), self.slope)
        scores = scores.masked_fill(kinds == 0, -1e9)
        return torch.softmax(scores, -1) @ hidden


class _GlobalAggregator(nn.Module):
    """Global-level item representation (Eq. 4-7), one hop."""

    def __init__(self, dim: int, slope: float, dropout: float):
        super().__init__()
        self.score_hidden = nn.Linear(dim + 1, dim, bias=False)
        self.score_out = nn.Linear(dim, 1, bias=False)
        self.combine = nn.Linear(2 * dim, dim, bias=False)
        self.slope, self.dropout = slope, dropout

    def forward(self, item: torch.Tensor, neighbor: torch.Tensor, weight: torch.Tensor,
                session: torch.Tensor) -> torch.Tensor:
        # item (B, N, d); neighbor (B, N, K, d); weight (B, N, K); session (B, d)
        match = session[:, None, None, :] * neighbor
        scores = self.score_out(F.leaky_relu(self.score_hidden(torch.cat([match, weight.unsqueeze(-1)], -1)), self.slope))
        scores = scores.squeeze(-1).masked_fill(weight == 0, -1e9)
        aggregate = (torch.softmax(scores, -1).unsqueeze(-1) * neighbor).sum(2)
        out = F.relu(self.combine(torch.cat([item, aggregate], -1)))
        return F.dropout(out, self.dropout, self.training)


class GCEGNN(SessionGraphModel):
    def __init__(self, config: GCEGNNConfig, data: ItemCatalogue):
        super().__init__()
        self.config = config
        self.n_items = data.n_items
        d = config.hidden_dim
        self.item_emb = nn.Embedding(data.n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.session_agg = _SessionAggregator(d, config.leaky_slope)
        self.global_agg = _GlobalAggregator(d, config.leaky_slope, config.dropout_global)
        self.readout_items = nn.Linear(2 * d, d, bias=False)
        self.readout_gate_items = nn.Linear(d, d)
        self.readout_gate_session = nn.Linear(d, d, bias=False)
        self.readout_out = nn.Linear(d, 1, bias=False)
        self._init_uniform(d)  # a zero padding row is also the neighbour of an item that has none
        train = getattr(data, "train", None)
        neighbors, weights = global_neighbors(user_histories(data.train, data.n_users), data.n_items, config.epsilon, config.n_neighbors) \
            if train is not None else (np.zeros((data.n_items + 1, config.n_neighbors), np.int64),
                                       np.zeros((data.n_items + 1, config.n_neighbors), np.float32))
        # Saved with the weights: serving rebuilds the model without the training data.
        self.register_buffer("neighbors", torch.from_numpy(neighbors))
        self.register_buffer("neighbor_weights", torch.from_numpy(weights))

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` session vectors of left-padded windows (Eq. 11-13)."""
        graphs = session_graphs(seq, self.graph_nodes)
        nodes = self.item_emb(graphs.nodes)
        local = self.session_agg(nodes, _with_self_loops(relation_types(graphs.a_out), graphs.nodes))
        mask = graphs.mask.unsqueeze(-1).float()
        items_in_order = self.item_emb(seq)
        session_mean = (items_in_order * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        neighbor_ids = self.get_buffer("neighbors")[graphs.nodes]
        weights = self.get_buffer("neighbor_weights")[graphs.nodes]
        global_ = self.global_agg(nodes, self.item_emb(neighbor_ids), weights, session_mean)
        hidden = local + global_
        positions = torch.gather(hidden, 1, graphs.alias.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self._readout(positions, mask)

    def _readout(self, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Soft attention with reversed positions: the newest item (the window's last) is position 0."""
        length = positions.shape[1]
        reversed_positions = self.pos_emb(torch.arange(length - 1, -1, -1, device=positions.device).clamp(max=self.config.max_len - 1))
        mean = (positions * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        z = torch.tanh(self.readout_items(torch.cat([reversed_positions.expand(len(positions), -1, -1), positions], -1)))
        gate = torch.sigmoid(self.readout_gate_items(z) + self.readout_gate_session(mean).unsqueeze(1))
        beta = self.readout_out(gate) * mask
        return (beta * positions).sum(1)


def _with_self_loops(kinds: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Each real node relates to itself (the official code's adjacency diagonal)."""
    real = nodes > 0
    diagonal = torch.diag_embed(real.long() * SELF)
    return torch.where(diagonal > 0, diagonal, kinds)


