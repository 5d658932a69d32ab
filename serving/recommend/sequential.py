"""Re-ranking candidate items with a next-item model (SASRec, or a session GNN) over a user's live
sequence.

The model encodes the user's recent items (oldest first, the request's context appended) into one
vector; a candidate's score is its inner product with the candidate's item embedding, as SASRec
predicts the next item (Kang & McAuley, ICDM 2018, Eq. 5) and SR-GNN scores it from its session
vector (Wu et al., AAAI 2019, Eq. 8). One forward pass of the registered, exported user encoder
per request (``features.registry.next_item``).

Example:
    >>> ranker = SequenceRanker(load_next_item_model(ModelRegistry(root).load_latest("sasrec")))  # doctest: +SKIP
    >>> ranked = ranker.rank(["12", "7", "12"], ["3", "9", "44"])  # doctest: +SKIP
    >>> ranked.items, ranked.because  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from features.registry.next_item import NextItemModel

__all__ = ["NextItems", "SequenceRanker", "RankedItems"]


@dataclass(frozen=True)
class NextItems:
    """The model's next-item scores over its whole catalogue after one sequence."""

    ids: list[str]  # raw item id of each row
    row_of: Mapping[str, int]  # raw item id -> row
    scores: np.ndarray  # (n_items,) float32

    def top(self, n: int, exclude: set[str] = frozenset()) -> list[str]:
        """The ``n`` best items, best first, skipping ``exclude``."""
        want = min(n + len(exclude), self.scores.size)
        if want <= 0:
            return []
        # argpartition, then sort the few: a full argsort of the catalogue was most of a bundle request
        top = np.sort(np.argpartition(-self.scores, want - 1)[:want])  # sorted: ties in catalogue order
        order = top[np.argsort(-self.scores[top], kind="stable")]
        return [self.ids[r] for r in order if self.ids[r] not in exclude][:n]

    def of(self, items: set[str] | list[str]) -> dict[str, float]:
        """item -> score of the items the model knows."""
        return {i: float(self.scores[self.row_of[i]]) for i in items if i in self.row_of}


@dataclass(frozen=True)
class RankedItems:
    """Candidates the model knows, best first.

    Attributes:
        items: candidate ids in score order.
        scores: ``(n,)`` float64 model scores, descending.
        vectors: ``(n, d)`` float64 item embeddings (for diversity re-ranking).
        because: per item, the position in ``history`` of the history item most similar to it
            (cosine over item embeddings): what the item is explained by.
        history: the history ids the model knew, oldest first (at most ``max_len``).
        history_positions: for each of ``history``, its position in the sequence given to ``rank``.
    """

    items: list[str]
    scores: np.ndarray
    vectors: np.ndarray
    because: list[int]
    history: list[str]
    history_positions: list[int]


class SequenceRanker:
    """Scores candidate items for a sequence of raw item ids with a trained next-item model.

    Scores come from ``NextItemModel.score_candidates`` (training's input layout: the last
    ``max_len`` known items, left-padded); this class adds the order, the item vectors for
    diversity and the history item that explains each candidate.

    Args:
        model: the registered model (``features.registry.next_item.load_next_item_model``).
    """

    def __init__(self, model: NextItemModel) -> None:
        self.model = model
        self.max_len = model.max_len
        self.row_of = model.row_of
        # float32 as trained: next_items multiplies the whole catalogue per request; the rows
        # rank() returns are widened to float64 (exactly) for the diversity re-ranking.
        self._items = model.item_vectors
        self._ids = [""] * len(self.row_of)  # raw id of each row
        for item, row in self.row_of.items():
            self._ids[row] = item

    def knows(self, item_id: str) -> bool:
        return item_id in self.row_of

    def next_items(self, sequence: Sequence[str]) -> NextItems | None:
        """Scores of every catalogue item as the next one after ``sequence`` (one forward pass);
        None when no item of the sequence is known."""
        user = self.model.user_vector(sequence)
        if user is None:
            return None
        return NextItems(self._ids, self.row_of, self._items @ user)

    def rank(self, sequence: Sequence[str], candidates: Sequence[str]) -> RankedItems | None:
        """Candidates known to the model, by score; None when no item of ``sequence`` is known
        or no candidate is (the caller keeps its own order then).

        Args:
            sequence: raw item ids, oldest first (unknown ids are skipped).
            candidates: raw item ids to score (unknown ids and repeats are dropped).
        """
        known = [(pos, i) for pos, i in enumerate(sequence) if i in self.row_of][-self.max_len :]
        cands = list(dict.fromkeys(c for c in candidates if c in self.row_of))
        if not known or not cands:
            return None
        history = [i for _, i in known]
        scores = self.model.score_candidates(history, cands).astype(np.float64)
        order = np.argsort(-scores, kind="stable")
        vectors = self._items[[self.row_of[cands[i]] for i in order]].astype(np.float64)
        because = _most_similar(vectors, self._items[[self.row_of[i] for i in history]].astype(np.float64))
        return RankedItems(
            items=[cands[i] for i in order],
            scores=scores[order],
            vectors=vectors,
            because=[int(b) for b in because],
            history=history,
            history_positions=[p for p, _ in known],
        )


def _most_similar(items: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Per item row, the index of the most cosine-similar history row (latest one on ties)."""
    unit = lambda m: m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)  # noqa: E731
    similarity = unit(items) @ unit(history).T
    # Reverse so that argmax (first maximum) picks the most recent of equally similar history items.
    return history.shape[0] - 1 - np.argmax(similarity[:, ::-1], axis=1)
