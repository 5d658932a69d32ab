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


def session_graphs(seq: torch.Tensor, n_nodes: int | None = None) -> SessionGraphs:
    """Graphs of left-padded windows ``(B, L)``: a node per distinct item, an edge per consecutive
    pair (counted once, as the paper's code does), degree-normalised in and out adjacency.

    Tensor operations only (no numpy, no per-row loop), so that a model exported with
    ``torch.export`` builds its graphs inside the exported program.

    Args:
        n_nodes: node slots per graph. None: as many as the batch's most distinct items (training:
            the official code's padding). An int >= that count (``L``, when exporting): the shape is
            then independent of the data; the extra slots are empty nodes no edge touches.
    """
    batch, length = seq.shape
    ordered = torch.sort(seq, dim=1).values  # padding (0) first, then the ids ascending
    first = ordered > 0
    first[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]  # the first copy of each distinct id
    distinct = first.sum(1, keepdim=True)
    if n_nodes is None:
        n_nodes = max(1, int(distinct.max()))
    slot = first.long().cumsum(1) - 1  # node of each distinct id: ascending, as np.unique
    spill = max(n_nodes, length)  # repeats and padding are written to this column, then dropped
    nodes = torch.zeros((batch, spill + 1), dtype=seq.dtype, device=seq.device)
    nodes.scatter_(1, torch.where(first, slot, spill), ordered)
    nodes = nodes[:, :n_nodes]
    filled = torch.arange(n_nodes, device=seq.device) < distinct
    keys = torch.where(filled, nodes, torch.iinfo(nodes.dtype).max)  # sorted rows for searchsorted
    items = seq > 0
    alias = torch.where(items, torch.searchsorted(keys, seq), 0)
    # The path skips padding wherever it is: move the items to the end, keeping their order.
    order = torch.argsort(items.to(torch.int8), dim=1, stable=True)
    path, on_path = torch.gather(alias, 1, order), torch.gather(items, 1, order)
    step = on_path[:, :-1] & on_path[:, 1:]
    edges = torch.zeros((batch, n_nodes * n_nodes), dtype=torch.float32, device=seq.device)
    edges.scatter_reduce_(1, path[:, :-1] * n_nodes + path[:, 1:], step.float(), reduce="amax")
    edges = edges.view(batch, n_nodes, n_nodes)
    # Degrees are whole counts: clamping the zeros to 1 divides only rows that have no edge.
    a_out = edges / edges.sum(2, keepdim=True).clamp(min=1.0)
    a_in = (edges / edges.sum(1, keepdim=True).clamp(min=1.0)).transpose(1, 2).contiguous()
    return SessionGraphs(nodes, alias, a_in, a_out, items)


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
    # Node slots of each session graph: None sizes them by the batch; the exported user encoder
    # sets the window length, so its graph shapes do not depend on the data (``session_graphs``).
    graph_nodes: int | None = None

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
        graphs = session_graphs(seq, self.graph_nodes)
        hidden = self.item_emb(graphs.nodes)
        for step in self.steps:
            hidden = step(graphs, hidden)
        positions = torch.gather(hidden, 1, graphs.alias.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        last = positions[:, -1]  # windows are left-padded: the last position is the newest item
        weights = self.attn_out(torch.sigmoid(self.attn_last(last).unsqueeze(1) + self.attn_items(positions)))
        global_ = (weights * positions * graphs.mask.unsqueeze(-1)).sum(1)
        return self.transform(torch.cat([last, global_], -1))
