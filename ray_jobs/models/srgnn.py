"""SR-GNN: a gated graph network over each session's item-transition graph.

Wu, Tang, Zhu, Wang, Xie, Tan. "Session-based Recommendation with Graph Neural Networks." AAAI
2019. Each session prefix is a directed graph of its distinct items with an edge per consecutive
transition (Sec. 3.2); incoming and outgoing adjacency are each normalised by degree; a gated GNN
(GRU-style update, Eq. 1-5) refines the node vectors for ``n_steps`` steps; the session vector is
the last item's vector (local) joined with a soft-attention sum over the session's items (global,
Eq. 6), linearly transformed (Eq. 7); items are scored by a dot product with it and trained with
cross-entropy over every item (Eq. 8-9). Trained on every prefix of every training session
(``windows: prefixes``: the paper's sequence augmentation), one target per prefix.

Ids as SASRec's: inputs are left-padded windows of ``item + 1`` (0 = padding); ``score`` returns
scores for items ``0..n_items-1``. The window is the last ``max_len`` items of a prefix (sessions
in the session benchmarks are short; the paper's graph holds the whole session).

Example:
    >>> model = SRGNN(SRGNNConfig.with_overrides({}), data)  # doctest: +SKIP
    >>> model.score({SEQ: torch.tensor([[0, 0, 5, 9, 5]])}).shape  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models.base import POS, SEQ, BatchKind, ItemCatalogue

__all__ = ["SRGNN", "SRGNNConfig", "SessionGraphModel", "SessionGraphs", "session_graphs"]


class SRGNNConfig(ModelConfig):
    defaults_file = "srgnn.yaml"
    max_len: PositiveInt
    hidden_dim: PositiveInt
    n_steps: PositiveInt
    lr: PositiveFloat
    lr_decay_every: PositiveInt | None = None  # epochs between learning-rate decays (the trainer's StepLR)
    lr_decay: float = Field(default=0.1, gt=0.0, le=1.0)
    weight_decay: NonNegativeFloat
    batch_size: PositiveInt
    windows: Literal["prefixes"] = "prefixes"

    def negatives_per_position(self) -> int:
        return 0  # cross-entropy over every item


@dataclass(frozen=True)
class SessionGraphs:
    """A batch of session graphs, padded to the largest (what the official code builds per batch).

    Attributes:
        nodes: ``(B, N)`` SASRec ids (item + 1) of each graph's distinct items, 0 = padding.
        alias: ``(B, L)`` node index of each window position (0 for padding positions).
        a_in, a_out: ``(B, N, N)`` incoming / outgoing adjacency, each row normalised by degree.
        mask: ``(B, L)`` true at the window's items.
    """

    nodes: torch.Tensor
    alias: torch.Tensor
    a_in: torch.Tensor
    a_out: torch.Tensor
    mask: torch.Tensor


def session_graphs(seq: torch.Tensor) -> SessionGraphs:
    """Graphs of left-padded windows ``(B, L)``: a node per distinct item, an edge per consecutive
    pair (counted once, as the paper's code does), degree-normalised in and out adjacency."""
    windows = seq.cpu().numpy()
    batch, length = windows.shape
    per_row = [np.unique(row[row > 0]) for row in windows]
    n_nodes = max(1, max(len(u) for u in per_row))
    nodes = np.zeros((batch, n_nodes), dtype=np.int64)
    alias = np.zeros((batch, length), dtype=np.int64)
    edges = np.zeros((batch, n_nodes, n_nodes), dtype=np.float32)
    for b, (row, unique) in enumerate(zip(windows, per_row)):
        nodes[b, : len(unique)] = unique
        items = row > 0
        alias[b, items] = np.searchsorted(unique, row[items])
        path = alias[b, items]
        edges[b, path[:-1], path[1:]] = 1.0
    out_degree = edges.sum(2, keepdims=True)
    in_degree = edges.sum(1, keepdims=True)
    a_out = np.divide(edges, out_degree, out=np.zeros_like(edges), where=out_degree > 0)
    a_in = np.divide(edges, in_degree, out=np.zeros_like(edges), where=in_degree > 0).transpose(0, 2, 1)
    device = seq.device
    return SessionGraphs(torch.from_numpy(nodes).to(device), torch.from_numpy(alias).to(device),
                         torch.from_numpy(np.ascontiguousarray(a_in)).to(device), torch.from_numpy(a_out).to(device),
                         seq > 0)


class _GatedGraphStep(nn.Module):
    """One propagation step of the gated GNN (Eq. 1-5)."""

    def __init__(self, dim: int):
        super().__init__()
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        self.gate_input = nn.Linear(2 * dim, 3 * dim)
        self.gate_hidden = nn.Linear(dim, 3 * dim)

    def forward(self, graphs: SessionGraphs, hidden: torch.Tensor) -> torch.Tensor:
        messages = torch.cat([graphs.a_in @ self.edge_in(hidden), graphs.a_out @ self.edge_out(hidden)], -1)
        in_r, in_z, in_n = self.gate_input(messages).chunk(3, -1)
        h_r, h_z, h_n = self.gate_hidden(hidden).chunk(3, -1)
        reset, update = torch.sigmoid(in_r + h_r), torch.sigmoid(in_z + h_z)
        candidate = torch.tanh(in_n + reset * h_n)
        return candidate + update * (hidden - candidate)


class SessionGraphModel(nn.Module):
    """What the session GNNs share: an item table (SASRec ids, 0 = padding), a session vector per
    left-padded window (``user_vectors``, what serving's next-item ranker multiplies with
    ``item_emb`` rows), scores over every item, and cross-entropy on each prefix's one target."""

    batch_kind: BatchKind = "sequence"
    item_emb: nn.Embedding

    def _init_uniform(self, dim: int) -> None:
        """The papers' code: every parameter uniform in (-1/sqrt(d), 1/sqrt(d)), padding row zero."""
        bound = 1.0 / math.sqrt(dim)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_vectors(batch[SEQ]) @ self.item_emb.weight[1:].T

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch[POS][:, -1]  # one target per prefix (windows: prefixes), at its last position
        keep = target > 0
        return F.cross_entropy(self.score({SEQ: batch[SEQ][keep]}), target[keep] - 1)

    def export_embeddings(self) -> dict[str, np.ndarray]:
        return {"item": self.item_emb.weight[1:].detach().cpu().numpy()}

    def on_epoch_start(self, epoch: int) -> None:
        pass


class SRGNN(SessionGraphModel):
    def __init__(self, config: SRGNNConfig, data: ItemCatalogue):
        super().__init__()
        self.config = config
        self.n_items = data.n_items
        d = config.hidden_dim
        self.item_emb = nn.Embedding(data.n_items + 1, d, padding_idx=0)
        self.steps = nn.ModuleList(_GatedGraphStep(d) for _ in range(config.n_steps))
        self.attn_last = nn.Linear(d, d)
        self.attn_items = nn.Linear(d, d)
        self.attn_out = nn.Linear(d, 1, bias=False)
        self.transform = nn.Linear(2 * d, d)
        self._init_uniform(d)

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` session representation of each left-padded window (Eq. 6-7)."""
        graphs = session_graphs(seq)
        hidden = self.item_emb(graphs.nodes)
        for step in self.steps:
            hidden = step(graphs, hidden)
        positions = torch.gather(hidden, 1, graphs.alias.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        last = positions[:, -1]  # windows are left-padded: the last position is the newest item
        weights = self.attn_out(torch.sigmoid(self.attn_last(last).unsqueeze(1) + self.attn_items(positions)))
        global_ = (weights * positions * graphs.mask.unsqueeze(-1)).sum(1)
        return self.transform(torch.cat([last, global_], -1))
