"""Re-ranking a scored candidate list: diversity (MMR) and a cross-category quota."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mmr(scores: np.ndarray, embeddings: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal Marginal Relevance (Carbonell & Goldstein, SIGIR 1998).

    Greedily picks the candidate maximising ``(1 - diversity) * relevance - diversity * max cosine
    similarity to what is already picked``. Relevance is the score min-max scaled to [0, 1] so that
    the knob means the same whatever the model's score range.

    Args:
        scores: (n,) candidate relevance.
        embeddings: (n, d) candidate vectors (for similarity).
        k: list length.
        diversity: 0 = pure relevance order, 1 = pure novelty.

    Returns:
        Positions into the candidate arrays, in display order.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError("diversity must be in [0, 1]")
    n = len(scores)
    k = min(k, n)
    if k == 0:
        return []
    span = float(scores.max() - scores.min())
    relevance = (scores - scores.min()) / span if span > 0 else np.zeros(n)
    if diversity == 0.0:
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    chosen: list[int] = [int(np.argmax(relevance))]
    max_sim = similarity[chosen[0]].copy()
    available = np.ones(n, dtype=bool)
    available[chosen[0]] = False
    while len(chosen) < k:
        gain = (1 - diversity) * relevance - diversity * max_sim
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, similarity[best])
    return chosen


def diversified_order(scores: np.ndarray, embeddings: np.ndarray, k: int, diversity: float) -> list[int]:
    """Every candidate position: the first ``k`` chosen by :func:`mmr`, then the rest by score.

    The tail only feeds :func:`cross_category_quota`'s promotions, so it is not worth MMR's
    quadratic greedy loop (a full MMR order of a 50-item pool was the ranker's largest cost).
    """
    head = mmr(scores, embeddings, k=k, diversity=diversity)
    rest = np.argsort(-scores, kind="stable")
    return head + rest[~np.isin(rest, head)].tolist()


def cross_category_quota(
    order: Sequence[int], categories: Sequence[str | None], anchor_category: str | None, k: int, min_other: int
) -> list[int]:
    """Make at least `min_other` of the first `k` come from a category other than `anchor_category`.

    Keeps the given order otherwise: the lowest-placed same-category entries in the top k are
    swapped for the best-placed other-category entries below it. Fewer are placed when fewer exist.

    Args:
        order: candidate positions in ranked order.
        categories: category of each candidate position (None: unknown, counts as other).
        anchor_category: the category of the context (current item / cart); None disables the quota.
        k: list length.
        min_other: how many of the k must be cross-category.
    """
    if min_other < 0 or k < 0:
        raise ValueError("k and min_other must be non-negative")
    top, rest = list(order[:k]), list(order[k:])
    if anchor_category is None or min_other == 0:
        return top
    is_other = lambda i: categories[i] != anchor_category  # noqa: E731
    missing = min_other - sum(map(is_other, top))
    promote = [i for i in rest if is_other(i)][: max(missing, 0)]
    for newcomer in promote:
        same = [pos for pos, i in enumerate(top) if not is_other(i)]
        if not same:
            break
        del top[same[-1]]
        top.append(newcomer)
    # Keep the original relative order among the final k.
    rank = {item: r for r, item in enumerate(order)}
    return sorted(top, key=rank.__getitem__)
