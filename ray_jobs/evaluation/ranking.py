"""Top-K accuracy metrics over a per-user hit matrix.

Every function takes ``hits``: a boolean array of shape ``(n_users, K)`` whose ``[u, r]`` entry says
whether the item ranked ``r`` (0-based) for user ``u`` is relevant, and returns one value per user so
that callers (and distributed evaluators) can sum and average them. Definitions follow the LightGCN /
NGCF evaluation code (recall divides by the number of relevant items, not by ``min(K, n_rel)``) and
RecBole's ``topk_metrics``.

Example:
    >>> import numpy as np
    >>> hits = np.array([[True, False, True]])
    >>> recall_at_k(hits, np.array([4]), k=3).tolist()
    [0.5]
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "recall_at_k",
    "precision_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "hit_rate_at_k",
]


def _check(hits: np.ndarray, k: int) -> np.ndarray:
    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D (n_users, K), got shape {hits.shape}")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} must be in [1, {hits.shape[1]}]")
    return hits[:, :k].astype(np.float64)


def _check_relevant(n_relevant: np.ndarray, n_users: int) -> np.ndarray:
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if n_relevant.shape != (n_users,):
        raise ValueError(f"n_relevant must have shape ({n_users},), got {n_relevant.shape}")
    if np.any(n_relevant <= 0):
        # A user without held-out items has undefined recall/NDCG; callers must drop them.
        raise ValueError("every user must have at least one relevant item")
    return n_relevant


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall@K per user: relevant items in the top K divided by all relevant items.

    Args:
        hits: ``(n_users, >=k)`` boolean hit matrix in rank order.
        n_relevant: ``(n_users,)`` number of held-out relevant items per user (> 0).
        k: cut-off.

    Returns:
        ``(n_users,)`` float64 array.
    """
    h = _check(hits, k)
    return h.sum(axis=1) / _check_relevant(n_relevant, h.shape[0])


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Precision@K per user: relevant items in the top K divided by K.

    Example:
        >>> precision_at_k(np.array([[True, False]]), k=2).tolist()
        [0.5]
    """
    return _check(hits, k).sum(axis=1) / k


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """NDCG@K per user with binary relevance and a log2 discount.

    DCG sums ``1 / log2(rank + 2)`` over hits; the ideal DCG places ``min(n_relevant, K)`` hits first.

    Args:
        hits: ``(n_users, >=k)`` boolean hit matrix in rank order.
        n_relevant: ``(n_users,)`` number of relevant items per user (> 0).
        k: cut-off.

    Returns:
        ``(n_users,)`` float64 array in ``[0, 1]``.
    """
    h = _check(hits, k)
    n_rel = _check_relevant(n_relevant, h.shape[0])
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = h @ discounts
    ideal_len = np.minimum(n_rel, k).astype(np.int64)
    idcg = np.concatenate([[0.0], np.cumsum(discounts)])[ideal_len]
    return dcg / idcg


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank of the first hit within the top K (0 when there is none).

    Example:
        >>> mrr_at_k(np.array([[False, True], [False, False]]), k=2).tolist()
        [0.5, 0.0]
    """
    h = _check(hits, k) > 0
    first = np.argmax(h, axis=1)
    return np.asarray(np.where(h.any(axis=1), 1.0 / (first + 1.0), 0.0), dtype=np.float64)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """HR@K per user: 1 if any relevant item is in the top K, else 0.

    Example:
        >>> hit_rate_at_k(np.array([[False, True]]), k=1).tolist()
        [0.0]
    """
    return np.asarray((_check(hits, k) > 0).any(axis=1), dtype=np.float64)
