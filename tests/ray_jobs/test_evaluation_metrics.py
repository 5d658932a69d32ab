"""Metrics against hand-computed values (in the style of RecBole's test_topk_metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_jobs.evaluation import (
    FULL_RANKING,
    EvalReport,
    catalogue_coverage,
    cross_category_share,
    hit_matrix,
    hit_rate_at_k,
    hr_at_k_sampled,
    intra_list_diversity,
    mask_seen,
    mrr_at_k,
    ndcg_at_k,
    ndcg_at_k_sampled,
    novelty,
    precision_at_k,
    rank_of_positive,
    recall_at_k,
    sample_negatives,
    top_k_items,
)

# Rows: user 0 hits at ranks 0 and 2 (3 relevant), user 1 at rank 3 (1 relevant), user 2 none (2 relevant).
HITS = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)
N_REL = np.array([3, 1, 2])


def test_recall():
    np.testing.assert_allclose(recall_at_k(HITS, N_REL, 4), [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(recall_at_k(HITS, N_REL, 2), [1 / 3, 0.0, 0.0])


def test_precision():
    np.testing.assert_allclose(precision_at_k(HITS, 4), [0.5, 0.25, 0.0])
    np.testing.assert_allclose(precision_at_k(HITS, 1), [1.0, 0.0, 0.0])


def test_ndcg():
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/log2(4)
    idcg0 = 1 + 1 / math.log2(3) + 0.5
    np.testing.assert_allclose(ndcg_at_k(HITS, N_REL, 4), [1.5 / idcg0, 1 / math.log2(5), 0.0])
    # at k=2 the ideal list is capped at 2 hits
    np.testing.assert_allclose(ndcg_at_k(HITS, N_REL, 2), [1 / (1 + 1 / math.log2(3)), 0.0, 0.0])


def test_mrr_and_hit_rate():
    np.testing.assert_allclose(mrr_at_k(HITS, 4), [1.0, 0.25, 0.0])
    np.testing.assert_allclose(mrr_at_k(HITS, 3), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(hit_rate_at_k(HITS, 4), [1.0, 1.0, 0.0])


def test_metric_input_checks():
    with pytest.raises(ValueError):
        recall_at_k(HITS, np.array([3, 0, 2]), 2)  # user without relevant items
    with pytest.raises(ValueError):
        precision_at_k(HITS, 5)  # k beyond the list


def test_full_ranking_masks_training_items():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5, 0.7], [0.1, 0.2, 0.3, 0.4, 0.5]])
    mask_seen(scores, np.array([0, 0, 1]), np.array([0, 4, 4]))  # user 0 trained on 0 and 4; user 1 on 4
    top = top_k_items(scores, 3)
    assert top.tolist() == [[1, 3, 2], [3, 2, 1]]
    hits = hit_matrix(top, np.array([0, 1, 1]), np.array([3, 1, 0]))
    assert hits.tolist() == [[False, True, False], [False, False, True]]
    np.testing.assert_allclose(recall_at_k(hits, np.array([1, 2]), 3), [1.0, 0.5])


def test_sampled_protocol():
    pos = np.array([0.5, 2.0, 0.0])
    neg = np.array([[0.9, 0.1, 0.5], [0.0, 1.0, 1.5], [1.0, 1.0, 1.0]])
    ranks = rank_of_positive(pos, neg)
    assert ranks.tolist() == [2, 0, 3]  # ties count against the positive
    np.testing.assert_allclose(hr_at_k_sampled(ranks, 1), [0, 1, 0])
    np.testing.assert_allclose(hr_at_k_sampled(ranks, 3), [1, 1, 0])
    np.testing.assert_allclose(ndcg_at_k_sampled(ranks, 3), [0.5, 1.0, 0.0])


def test_sample_negatives_excludes_history(rng):
    exclude = [np.array([0, 1, 2]), np.array([5])]
    neg = sample_negatives(rng, 6, exclude, n_neg=50)
    assert neg.shape == (2, 50)
    assert not np.isin(neg[0], exclude[0]).any() and not np.isin(neg[1], exclude[1]).any()


def test_coverage_novelty():
    top = np.array([[0, 1], [0, 2]])
    assert catalogue_coverage(top, 4) == 0.75
    # p(i) = count / n_users = 1, 0.5, 0.25 -> self-information 0, 1, 2 bits
    np.testing.assert_allclose(novelty(top, np.array([4, 2, 1, 0]), 4), [0.5, 1.0])
    # never-seen items are floored at count 1
    np.testing.assert_allclose(novelty(np.array([[3, 3]]), np.array([4, 2, 1, 0]), 4), [2.0])


def test_intra_list_diversity():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    np.testing.assert_allclose(intra_list_diversity(np.array([[0, 1], [0, 2]]), vectors), [1.0, 0.0], atol=1e-12)
    # three items, pairs (0,1)=1, (0,2)=0, (1,2)=1 -> mean 2/3
    np.testing.assert_allclose(intra_list_diversity(np.array([[0, 1, 2]]), vectors), [2 / 3])


def test_cross_category_share():
    category = np.array([0, 1, 0, 2])
    top = np.array([[0, 1], [0, 2]])
    share = cross_category_share(top, category, np.array([0, 1]), np.array([0, 3]))
    np.testing.assert_allclose(share, [0.5, 1.0])


def test_report_states_protocol():
    r = EvalReport(protocol=FULL_RANKING, split="test", n_users=3, metrics={"recall@20": 0.25})
    assert "full ranking" in r.describe()
    assert r.flat() == {"test/recall@20": 0.25, "test/protocol": FULL_RANKING, "test/n_users": 3}
