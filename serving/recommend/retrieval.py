"""Exact top-k retrieval over registered embeddings (inner product), vectorised.

Why exact and not an ANN index: at catalogue sizes of 10^4–10^6 items and d=64 a batched float32
matrix product reads the item matrix once per batch of queries and is memory-bandwidth bound;
an index only pays off beyond that (measured in BENCHMARKS.md against the bandwidth bound).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopK:
    """Per query: item indices (rows of the item matrix) and scores, best first."""

    indices: np.ndarray  # (b, k) int64; -1 where fewer than k candidates remained
    scores: np.ndarray  # (b, k) float32; -inf where indices is -1


class ExactTopK:
    """Inner-product top-k over an (n_items, d) float32 matrix.

    Args:
        item_embeddings: (n_items, d) array; copied once to contiguous float32.

    Example:
        >>> index = ExactTopK(np.eye(3, dtype=np.float32))
        >>> index.search(np.array([[0.0, 1.0, 0.5]], dtype=np.float32), k=2).indices.tolist()
        [[1, 2]]
    """

    def __init__(self, item_embeddings: np.ndarray) -> None:
        if item_embeddings.ndim != 2 or item_embeddings.shape[0] == 0:
            raise ValueError(f"item embeddings must be a non-empty (n, d) matrix, got shape {item_embeddings.shape}")
        self.items = np.ascontiguousarray(item_embeddings, dtype=np.float32)

    @property
    def n_items(self) -> int:
        return self.items.shape[0]

    @property
    def dim(self) -> int:
        return self.items.shape[1]

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(b, n_items) inner products."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} != item dimension {self.dim}")
        return queries @ self.items.T

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None) -> TopK:
        """Top-k items per query, excluding per-query item indices (e.g. already bought).

        Args:
            queries: (b, d) or (d,) user / context vectors.
            k: how many per query (capped at n_items).
            exclude: per query, item indices that must not be returned.
        """
        if k <= 0:
            raise ValueError("k must be positive")
        scores = self.scores(queries)
        if exclude is not None:
            if len(exclude) != scores.shape[0]:
                raise ValueError("exclude needs one list per query")
            rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
            cols = np.fromiter((i for e in exclude for i in e), dtype=np.int64, count=rows.size)
            scores[rows, cols] = -np.inf
        return _top_k(scores, min(k, self.n_items))


def _top_k(scores: np.ndarray, k: int) -> TopK:
    # argpartition is O(n) per row; only the k winners are then sorted.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    indices = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    indices[~np.isfinite(top)] = -1
    return TopK(indices, top)
