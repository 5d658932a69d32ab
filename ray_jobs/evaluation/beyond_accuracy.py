"""Beyond-accuracy metrics over recommendation lists: coverage, novelty, diversity, category reach.

``top_items`` is always an ``(n_users, k)`` array of recommended item ids, best first.

Example:
    >>> import numpy as np
    >>> top = np.array([[0, 1], [0, 2]])
    >>> catalogue_coverage(top, n_items=4)
    0.75
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "catalogue_coverage",
    "novelty",
    "intra_list_diversity",
    "cross_category_share",
]


def catalogue_coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list."""
    return float(np.unique(top_items).size) / float(n_items)


def novelty(top_items: np.ndarray, item_counts: np.ndarray, n_users: int) -> np.ndarray:
    """Mean self-information ``-log2(p(i))`` of each user's list, ``p(i) = count(i) / n_users``.

    Items never seen in training get a count of 1 (add-one floor) so the value stays finite.
    (Zhou et al., PNAS 2010, "Solving the apparent diversity-accuracy dilemma".)

    Args:
        top_items: ``(n_users, k)`` recommendations.
        item_counts: ``(n_items,)`` number of training users who interacted with each item.
        n_users: number of training users (the probability denominator).

    Returns:
        ``(n_users,)`` novelty in bits.
    """
    p = np.maximum(np.asarray(item_counts, dtype=np.float64)[top_items], 1.0) / float(n_users)
    return (-np.log2(p)).mean(axis=1)


def intra_list_diversity(top_items: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine distance ``1 - cos(i, j)`` within each list (Ziegler et al., WWW 2005).

    Pass one-hot category vectors to get category-based ILD (share of pairs in different categories).

    Args:
        top_items: ``(n_users, k)`` recommendations, ``k >= 2``.
        item_vectors: ``(n_items, d)`` item embeddings or category indicators.

    Returns:
        ``(n_users,)`` values in ``[0, 2]`` (``[0, 1]`` for non-negative vectors).
    """
    k = top_items.shape[1]
    if k < 2:
        raise ValueError("intra-list diversity needs lists of at least 2 items")
    v = np.asarray(item_vectors, dtype=np.float64)[top_items]
    v = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
    sims = np.einsum("ukd,ujd->ukj", v, v)
    off_diag = sims.sum(axis=(1, 2)) - np.trace(sims, axis1=1, axis2=2)
    return 1.0 - off_diag / (k * (k - 1))


def cross_category_share(
    top_items: np.ndarray,
    item_category: np.ndarray,
    history_rows: np.ndarray,
    history_items: np.ndarray,
) -> np.ndarray:
    """Per user, the share of recommended items whose category is absent from their history.

    Measures how often the recommender leads a user into a category they have not touched.

    Args:
        top_items: ``(n_users, k)`` recommendations.
        item_category: ``(n_items,)`` integer category per item.
        history_rows: row (0..n_users-1) of each training interaction.
        history_items: item id of each training interaction.

    Returns:
        ``(n_users,)`` values in ``[0, 1]``.
    """
    cats = np.asarray(item_category, dtype=np.int64)
    n_cats = int(cats.max(initial=0)) + 1
    hist_keys = history_rows.astype(np.int64) * n_cats + cats[history_items]
    rec_keys = np.arange(top_items.shape[0], dtype=np.int64)[:, None] * n_cats + cats[top_items]
    return (~np.isin(rec_keys, hist_keys)).mean(axis=1)
