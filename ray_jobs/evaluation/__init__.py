"""Pure evaluation metrics (numpy/torch) and evaluation protocols.

Example:
    >>> import numpy as np
    >>> from ray_jobs.evaluation import ndcg_at_k
    >>> round(float(ndcg_at_k(np.array([[False, True]]), np.array([1]), k=2)[0]), 4)
    0.6309
"""

from ray_jobs.evaluation.beyond_accuracy import (
    catalogue_coverage,
    cross_category_share,
    intra_list_diversity,
    novelty,
)
from ray_jobs.evaluation.full_ranking import count_per_row, hit_matrix, mask_seen, top_k_items
from ray_jobs.evaluation.protocols import FULL_RANKING, SAMPLED_LOO, EvalReport, metric_key
from ray_jobs.evaluation.ranking import (
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)
from ray_jobs.evaluation.sampled import (
    hr_at_k_sampled,
    ndcg_at_k_sampled,
    rank_of_positive,
    sample_negatives,
)

__all__ = [
    "FULL_RANKING",
    "SAMPLED_LOO",
    "EvalReport",
    "metric_key",
    "recall_at_k",
    "precision_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "hit_rate_at_k",
    "mask_seen",
    "top_k_items",
    "hit_matrix",
    "count_per_row",
    "rank_of_positive",
    "hr_at_k_sampled",
    "ndcg_at_k_sampled",
    "sample_negatives",
    "catalogue_coverage",
    "novelty",
    "intra_list_diversity",
    "cross_category_share",
]
