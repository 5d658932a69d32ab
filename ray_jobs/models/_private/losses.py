"""Loss terms shared by the pairwise models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean BPR loss ``-log sigmoid(pos - neg)`` (Rendle et al., UAI 2009)."""
    return -F.logsigmoid(pos - neg).mean()


def l2_per_example(*embeddings: torch.Tensor) -> torch.Tensor:
    """``sum ||e||^2 / 2`` divided by the batch size, as in the LightGCN reference code."""
    total = torch.stack([e.pow(2).sum() for e in embeddings]).sum()
    return 0.5 * total / embeddings[0].shape[0]
