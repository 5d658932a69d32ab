"""Sampled-candidate metrics for the SASRec protocol (Kang & McAuley, ICDM 2018, Sec. IV-A).

Leave-one-out: each user's held-out item is ranked against 100 items sampled from those the user
has not interacted with; HR@K is 1 if it lands in the top K and NDCG@K is ``1 / log2(rank + 2)``.

Example:
    >>> import numpy as np
    >>> ranks = rank_of_positive(np.array([0.5]), np.array([[0.9, 0.1, 0.5]]))
    >>> ranks.tolist()   # one negative above, one tie (counted against the positive)
    [2]
    >>> hr_at_k_sampled(ranks, k=2).tolist(), ndcg_at_k_sampled(ranks, k=3).tolist()
    ([0.0], [0.5])
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_of_positive", "hr_at_k_sampled", "ndcg_at_k_sampled", "sample_negatives"]


def rank_of_positive(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """0-based rank of each positive among itself and its negatives.

    Ties count against the positive, so a constant scorer cannot look perfect.

    Args:
        pos_scores: ``(n_users,)`` score of the held-out item.
        neg_scores: ``(n_users, n_neg)`` scores of the sampled negatives.

    Returns:
        ``(n_users,)`` int64 ranks in ``[0, n_neg]``.
    """
    pos = np.asarray(pos_scores)[:, None]
    return (np.asarray(neg_scores) >= pos).sum(axis=1).astype(np.int64)


def hr_at_k_sampled(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user hit ratio: 1.0 where ``rank < k``."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at_k_sampled(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@K with a single relevant item: ``1 / log2(rank + 2)`` if ``rank < k``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def sample_negatives(
    rng: np.random.Generator,
    n_items: int,
    exclude: list[np.ndarray],
    n_neg: int = 100,
) -> np.ndarray:
    """Sample ``n_neg`` distinct-from-history items per user, uniformly, with rejection.

    Args:
        rng: seeded generator (the caller fixes the seed so evaluation is repeatable).
        n_items: item ids are ``0..n_items-1``.
        exclude: per user, the item ids that may not be sampled (history and the positive).
        n_neg: negatives per user (100 in the SASRec paper).

    Returns:
        ``(len(exclude), n_neg)`` int64 array. Negatives may repeat, as in the SASRec code.
    """
    out = rng.integers(0, n_items, size=(len(exclude), n_neg), dtype=np.int64)
    for u, seen in enumerate(exclude):
        bad = np.isin(out[u], seen)
        while bad.any():
            out[u, bad] = rng.integers(0, n_items, size=int(bad.sum()), dtype=np.int64)
            bad = np.isin(out[u], seen)
    return out
