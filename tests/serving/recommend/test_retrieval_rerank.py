"""Exact top-k against a brute-force sort; MMR and the cross-category quota on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from serving.recommend import ExactTopK, cross_category_quota, diversified_order, mmr


def test_exact_top_k_matches_a_full_sort_and_honours_exclusions() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(1000, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    exclude = [list(rng.choice(1000, size=20, replace=False)) for _ in range(7)]
    got = ExactTopK(items).search(queries, k=10, exclude=exclude)
    full = queries @ items.T
    for q in range(7):
        full[q, exclude[q]] = -np.inf
        expected = np.argsort(-full[q], kind="stable")[:10]
        assert got.indices[q].tolist() == expected.tolist()
        assert np.allclose(got.scores[q], full[q, expected])
        assert not set(got.indices[q]) & set(exclude[q])


def test_top_k_with_fewer_candidates_than_k_pads_with_minus_one() -> None:
    got = ExactTopK(np.eye(3, dtype=np.float32)).search(np.ones((1, 3), np.float32), k=5, exclude=[[0]])
    assert got.indices.tolist() == [[1, 2, -1]]


@pytest.mark.parametrize(
    ("items", "queries", "k", "error"),
    [
        (np.zeros((0, 4)), np.zeros((1, 4)), 1, "non-empty"),
        (np.zeros((3, 4)), np.zeros((1, 5)), 1, "dimension"),
        (np.zeros((3, 4)), np.zeros((1, 4)), 0, "positive"),
    ],
)
def test_invalid_retrieval_arguments(items: np.ndarray, queries: np.ndarray, k: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ExactTopK(items).search(queries, k)


def test_mmr_trades_relevance_for_diversity() -> None:
    # Items 0 and 1 are near-duplicates with the top scores; item 2 is different.
    embeddings = np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]])
    scores = np.array([1.0, 0.95, 0.5])
    assert mmr(scores, embeddings, k=2, diversity=0.0) == [0, 1]
    assert mmr(scores, embeddings, k=2, diversity=0.6) == [0, 2]
    with pytest.raises(ValueError):
        mmr(scores, embeddings, k=2, diversity=1.5)


def test_diversified_order_is_mmr_for_the_first_k_then_the_rest_by_score() -> None:
    rng = np.random.default_rng(3)
    embeddings, scores = rng.normal(size=(30, 4)), rng.normal(size=30)
    order = diversified_order(scores, embeddings, k=5, diversity=0.4)
    assert order[:5] == mmr(scores, embeddings, k=5, diversity=0.4)
    tail = order[5:]
    assert sorted(order) == list(range(30))
    assert list(scores[tail]) == sorted(scores[tail], reverse=True)


def test_cross_category_quota_promotes_the_best_other_category_items() -> None:
    categories = ["shoes", "shoes", "shoes", "socks", "shoes", "laces"]
    order = [0, 1, 2, 3, 4, 5]
    assert cross_category_quota(order, categories, "shoes", k=3, min_other=0) == [0, 1, 2]
    assert cross_category_quota(order, categories, "shoes", k=3, min_other=1) == [0, 1, 3]
    assert cross_category_quota(order, categories, "shoes", k=3, min_other=2) == [0, 3, 5]
    assert cross_category_quota(order, categories, "shoes", k=3, min_other=5) == [0, 3, 5]  # only 2 exist
    assert cross_category_quota(order, categories, None, k=3, min_other=2) == [0, 1, 2]
