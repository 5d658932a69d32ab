"""SASRec: causal self-attention over a user's recent items, predicting the next item.

Kang, McAuley. "Self-Attentive Sequential Recommendation." ICDM 2018. Learned positional embeddings
(Sec. III-A), pre-layer-norm self-attention and point-wise feed-forward blocks with residuals and
dropout (III-B..D), a shared item embedding for prediction (III-E), and binary cross-entropy with
one sampled negative per position (III-F, Eq. 6): ``loss: bce``, the paper's objective and default.

Under full ranking over a large catalogue that objective is known to be weak; ``loss`` selects the
ones published re-evaluations train with instead:
- ``ce``: full softmax cross-entropy over every item at every position (Klenitskiy & Vasilev,
  "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023);
- ``sampled_softmax``: softmax over the positive and ``n_negatives`` uniform negatives per position;
- ``gbce``: generalised BCE with ``n_negatives`` negatives and calibration ``gbce_t`` (Petrov &
  Macdonald, "gSASRec: Reducing Overconfidence in Sequential Recommendation Trained with Negative
  Sampling", RecSys 2023, Eq. 9-11): the positive term is weighted by
  beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = n_negatives / (n_items - 1).
``windows: all`` trains on every max_len window of a long history, not only the last one.

Ids: inputs use SASRec ids ``item + 1`` with 0 as padding; ``score`` returns scores for items
``0..n_items-1`` in dataset ids.

Serving does not run this class: registration exports its ``user_vectors`` with the item table
(``features.registry.next_item``), which serving loads.

Example:
    >>> model = SASRec(SASRecConfig.with_overrides({"n_blocks": 1}), data)  # doctest: +SKIP
    >>> model.score({SEQ: torch.tensor([[0, 0, 5, 9]])}).shape  # doctest: +SKIP
    torch.Size([1, 23715])
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from ray_jobs.models._private.config import ModelConfig
from ray_jobs.models.base import NEG, POS, SEQ, BatchKind, ItemCatalogue

__all__ = ["SASRec", "SASRecConfig"]


class SASRecConfig(ModelConfig):
    defaults_file = "sasrec.yaml"
    max_len: PositiveInt
    hidden_dim: PositiveInt
    n_blocks: PositiveInt
    n_heads: PositiveInt
    dropout: float = Field(ge=0.0, lt=1.0)
    l2_emb: NonNegativeFloat
    lr: PositiveFloat
    beta2: float = Field(gt=0.0, lt=1.0)
    weight_decay: NonNegativeFloat
    batch_size: PositiveInt
    # Training objective and data (module docstring); the defaults are the paper's, so versions
    # registered before these options existed load unchanged.
    loss: Literal["bce", "ce", "sampled_softmax", "gbce"] = "bce"
    n_negatives: PositiveInt = 1  # per position, for bce / sampled_softmax / gbce (ce uses every item)
    gbce_t: float = Field(default=0.75, ge=0.0, le=1.0)
    windows: Literal["last", "all", "prefixes"] = "last"

    def negatives_per_position(self) -> int:
        """Sampled negatives each training position needs (0: the loss scores every item)."""
        return 0 if self.loss == "ce" else self.n_negatives


class _FeedForward(nn.Module):
    """Point-wise two-layer feed-forward with dropout and a residual (Sec. III-C)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class SASRec(nn.Module):
    batch_kind: BatchKind = "sequence"

    def __init__(self, config: SASRecConfig, data: ItemCatalogue):
        super().__init__()
        self.config = config
        self.n_items = data.n_items
        d = config.hidden_dim
        self.item_emb = nn.Embedding(data.n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(config.n_blocks))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(d, config.n_heads, dropout=config.dropout, batch_first=True)
            for _ in range(config.n_blocks)
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(config.n_blocks))
        self.ffns = nn.ModuleList(_FeedForward(d, config.dropout) for _ in range(config.n_blocks))
        self.last_norm = nn.LayerNorm(d, eps=1e-8)
        causal = torch.triu(torch.ones(config.max_len, config.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)  # as pmixer/SASRec.pytorch; the TF code uses Xavier too
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` hidden states; position ``t`` attends to positions ``<= t`` only."""
        length = seq.shape[1]
        pad = (seq == 0).unsqueeze(-1)
        x = self.item_emb(seq) * math.sqrt(self.config.hidden_dim)
        x = x + self.pos_emb(torch.arange(length, device=seq.device)).unsqueeze(0)
        x = self.emb_dropout(x).masked_fill(pad, 0.0)
        mask = self.get_buffer("causal_mask")[:length, :length]
        for norm, attn, ffn_norm, ffn in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns):
            q = norm(x)
            out, _ = attn(q, x, x, attn_mask=mask, need_weights=False)
            x = ffn(ffn_norm(q + out)).masked_fill(pad, 0.0)
        return self.last_norm(x)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pos = batch[POS]
        valid = pos != 0  # padded positions carry no target
        # Only the positions with a target are scored: the full softmax is (positions x items).
        h = self.encode(batch[SEQ])[valid]
        target = pos[valid]
        if not len(target):
            loss = h.sum() * 0.0
        elif self.config.loss == "ce":
            loss = F.cross_entropy(h @ self.item_emb.weight[1:].T, target - 1)
        else:
            neg = batch[NEG]
            neg = (neg.unsqueeze(-1) if neg.dim() == 2 else neg)[valid]  # (positions, n_negatives)
            pos_logit = (h * self.item_emb(target)).sum(-1)
            neg_logit = torch.einsum("pd,pkd->pk", h, self.item_emb(neg))
            loss = self._sampled_loss(pos_logit, neg_logit).mean()
        if self.config.l2_emb > 0:
            loss = loss + self.config.l2_emb * self.item_emb.weight.pow(2).sum()
        return loss

    def _sampled_loss(self, pos_logit: torch.Tensor, neg_logit: torch.Tensor) -> torch.Tensor:
        """Per-position loss of the positive ``(P,)`` against its negatives ``(P, k)``."""
        if self.config.loss == "sampled_softmax":
            logits = torch.cat([pos_logit.unsqueeze(-1), neg_logit], dim=-1)
            return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device), reduction="none")
        negative_term = -F.logsigmoid(-neg_logit).sum(-1)
        if self.config.loss == "gbce":
            alpha = neg_logit.shape[-1] / max(self.n_items - 1, 1)
            beta = alpha * (self.config.gbce_t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
            return -beta * F.logsigmoid(pos_logit) + negative_term
        return -F.logsigmoid(pos_logit) + negative_term  # bce: Eq. 6 (k = 1 in the paper)

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` representation at the last position of each left-padded sequence."""
        return self.encode(seq)[:, -1, :]

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_vectors(batch[SEQ]) @ self.item_emb.weight[1:].T

    def export_embeddings(self) -> dict[str, np.ndarray]:
        # Users are encoded online from their recent sequence; only items are exported.
        return {"item": self.item_emb.weight[1:].detach().cpu().numpy()}

    def on_epoch_start(self, epoch: int) -> None:
        pass
