"""Request-time recommendation pieces with no Ray in them: exact retrieval and re-ranking."""

from serving.recommend.retrieval import ExactTopK, TopK
from serving.recommend.rerank import cross_category_quota, diversified_order, mmr

__all__ = ["ExactTopK", "TopK", "mmr", "diversified_order", "cross_category_quota"]
