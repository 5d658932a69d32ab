"""The narrow interface every model implements, and the batch keys trainers fill.

A model is an ``nn.Module`` whose ``forward(batch)`` returns the training loss (so DDP sees the
forward pass), whose ``score(batch)`` returns ``(B, n_items)`` scores for full ranking, and whose
``export_embeddings()`` returns the arrays that retrieval serves.

Example:
    >>> model = build_model("bprmf", data)  # doctest: +SKIP
    >>> loss = model({USER: u, POS: i, NEG: j}); scores = model.score({USER: u})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["Recommender", "BatchKind", "ItemCatalogue", "USER", "POS", "NEG", "SEQ"]

# Batch dictionary keys.
USER = "user"  # (B,) user ids
POS = "pos"  # (B,) positive item ids, or (B, L) next items for sequences (SASRec ids, 0 = pad)
NEG = "neg"  # same shape as POS: sampled negatives
SEQ = "seq"  # (B, L) left-padded input sequences of SASRec ids (item id + 1; 0 = pad)

# What the trainer must feed: (user, pos, neg) triples, (seq, pos, neg) windows, or nothing.
BatchKind = Literal["pairwise", "sequence", "none"]


class ItemCatalogue(Protocol):
    """What a sequence model needs to know about its data: the number of items (an
    ``InteractionData`` is one; serving rebuilds a model from its registered item ids)."""

    n_items: int


@runtime_checkable
class Recommender(Protocol):
    batch_kind: BatchKind

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of one batch."""
        ...

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, n_items)`` scores for the users (``USER``) or sequences (``SEQ``) in ``batch``."""
        ...

    def export_embeddings(self) -> dict[str, np.ndarray]:
        """Named float32 arrays for retrieval, e.g. ``{"user": (U, d), "item": (I, d)}``."""
        ...

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch hook (e.g. resampling augmented graphs); a no-op for most models."""
        ...
