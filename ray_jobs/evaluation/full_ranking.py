"""Full-ranking helpers: mask already-seen items, take the top K, and mark hits.

Interactions are given as coordinate arrays ``(rows, cols)`` where ``rows`` index the rows of the
score matrix being evaluated (0..batch-1) and ``cols`` are item ids. Pure functions, no config.

Example:
    >>> import torch, numpy as np
    >>> scores = torch.tensor([[0.9, 0.8, 0.1, 0.5]])
    >>> masked = mask_seen(scores, np.array([0]), np.array([0]))
    >>> top = top_k_items(masked, k=2)
    >>> top.tolist()
    [[1, 3]]
    >>> hit_matrix(top, np.array([0]), np.array([3])).tolist()
    [[False, True]]
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mask_seen", "top_k_items", "hit_matrix", "count_per_row"]


def mask_seen(scores: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """Return ``scores`` with the given (row, item) cells set to ``-inf`` (in place).

    Args:
        scores: ``(batch, n_items)`` float tensor.
        rows: row indices (0..batch-1) of items to exclude, e.g. the users' training items.
        cols: item ids aligned with ``rows``.

    Returns:
        The same tensor, so calls can be chained.
    """
    if len(rows):
        r = torch.as_tensor(rows, dtype=torch.long, device=scores.device)
        c = torch.as_tensor(cols, dtype=torch.long, device=scores.device)
        scores[r, c] = -torch.inf
    return scores


def top_k_items(scores: torch.Tensor, k: int) -> np.ndarray:
    """Item ids of the ``k`` highest scores per row, best first, as ``(batch, k)`` int64."""
    k = min(k, scores.shape[1])
    return torch.topk(scores, k=k, dim=1, sorted=True).indices.cpu().numpy().astype(np.int64)


def hit_matrix(top_items: np.ndarray, truth_rows: np.ndarray, truth_cols: np.ndarray) -> np.ndarray:
    """Boolean ``(batch, k)`` matrix: whether each recommended item is in that row's ground truth.

    Args:
        top_items: ``(batch, k)`` recommended item ids.
        truth_rows: row index (0..batch-1) of each held-out interaction.
        truth_cols: item id of each held-out interaction.
    """
    n_cols = int(max(top_items.max(initial=0), np.max(truth_cols, initial=0))) + 1
    # One int64 key per (row, item) turns set membership into a single vectorised isin.
    rec_keys = np.arange(top_items.shape[0], dtype=np.int64)[:, None] * n_cols + top_items
    truth_keys = truth_rows.astype(np.int64) * n_cols + truth_cols.astype(np.int64)
    return np.isin(rec_keys, truth_keys)


def count_per_row(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Number of interactions per row (e.g. relevant items per evaluated user)."""
    return np.bincount(rows.astype(np.int64), minlength=n_rows)
