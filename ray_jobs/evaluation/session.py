"""Session-based next-item evaluation (SR-GNN, Wu et al. AAAI 2019; GCE-GNN, Wang et al. SIGIR 2020).

Every test session ``[i1, ..., in]`` yields one case per prefix, ``[i1..it] -> i(t+1)`` for
``t = 1..n-1`` (SR-GNN's "sequence augmentation"). Each case is ranked against ALL items with no
masking: in session data the next item is often already in its prefix (revisits), and the papers
keep it rankable. P@K is the share of cases whose target is in the top K (with one target this is
Recall@K and HR@K); MRR@K is ``1 / rank`` when ``rank <= K`` and 0 beyond.

Example:
    >>> import numpy as np
    >>> cases = session_cases([np.array([5, 7, 5])])
    >>> [cases.prefix(c).tolist() for c in range(len(cases))], cases.targets.tolist()
    ([[5], [5, 7]], [7, 5])
    >>> cases.windows(slice(None), max_len=3).tolist()   # ids + 1, 0 = padding on the left
    [[0, 0, 6], [0, 6, 8]]
    >>> scores = np.array([[0, 0, 0, 0, 0, 0.0, 0.9, 0.5],    # target 7 ranks 2nd
    ...                    [0, 0, 0, 0, 0, 0.9, 0.5, 0.0]])   # target 5 ranks 1st, though in the prefix
    >>> m = session_metrics(scores, cases.targets, ks=[1, 2])
    >>> m["hit@1"].tolist(), m["mrr@2"].tolist()
    ([0.0, 1.0], [0.5, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "SESSION_PROTOCOL",
    "SessionCases",
    "SessionMetricSums",
    "evaluate_sessions",
    "session_cases",
    "session_metrics",
    "target_ranks",
]

SESSION_PROTOCOL = (
    "session-based next item: one test case per prefix of each test session, full ranking over all "
    "items, no masking of items in the prefix; P@K = share of cases with the target in the top K "
    "(= Recall@K, HR@K), MRR@K with 0 beyond rank K"
)

# Per-case metric name (what session_metrics returns) -> name in reports (the papers' P@K).
_REPORT_NAMES = {"hit": "p", "mrr": "mrr", "ndcg": "ndcg"}
_DISPLAY_NAMES = {"p": "P", "mrr": "MRR", "ndcg": "NDCG"}


@dataclass(frozen=True, eq=False)
class SessionCases:
    """Next-item test cases: case ``c`` is ``items[starts[c]:ends[c]] -> targets[c]``.

    Prefixes are slices of one flat item array, so the ``n - 1`` prefixes of a session share its
    storage (memory linear in the number of events, not quadratic).

    Attributes:
        items: flat int64 item ids that the prefixes slice.
        starts: ``(n_cases,)`` int64 first position of each prefix in ``items``.
        ends: ``(n_cases,)`` int64 one past the last position of each prefix.
        targets: ``(n_cases,)`` int64 next item of each case.
        session_index: ``(n_cases,)`` int64 index of the session (or source row) each case came from.
    """

    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    targets: np.ndarray
    session_index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.targets)
        if not (len(self.starts) == len(self.ends) == len(self.session_index) == n):
            raise ValueError("starts, ends, targets and session_index must have one entry per case")
        if n and (np.any(self.starts > self.ends) or self.starts.min() < 0 or self.ends.max() > len(self.items)):
            raise ValueError("each case needs 0 <= start <= end <= len(items)")

    @classmethod
    def from_prefixes(
        cls,
        prefixes: Sequence[Sequence[int] | np.ndarray],
        targets: Sequence[int] | np.ndarray,
        session_index: Sequence[int] | np.ndarray | None = None,
    ) -> SessionCases:
        """Cases from explicit ``prefix -> target`` pairs (data that is already augmented, e.g. a
        RecBole session atomic file); no further augmentation. ``session_index`` defaults to the
        row number."""
        lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        items = _concat_int64(prefixes)
        index = np.arange(len(lengths)) if session_index is None else session_index
        return cls(items, starts, ends, np.asarray(targets, dtype=np.int64).reshape(-1),
                   np.asarray(index, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def prefix_lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def prefix(self, case: int) -> np.ndarray:
        """The prefix items of one case (a view into ``items``)."""
        return self.items[self.starts[case]:self.ends[case]]

    def windows(self, rows: np.ndarray | slice, max_len: int, offset: int = 1) -> np.ndarray:
        """Last ``max_len`` prefix items of the selected cases, left-padded with 0.

        Args:
            rows: case indices (int array) or a slice of cases.
            max_len: window width; longer prefixes keep their most recent items.
            offset: added to every real item id so that 0 is free for padding (SASRec: item + 1).

        Returns:
            ``(B, max_len)`` int64 array; the most recent item is in the last column.
        """
        starts, ends = self.starts[rows], self.ends[rows]
        # Position in `items` of each window cell; cells before the prefix start are padding.
        positions = ends[:, None] - max_len + np.arange(max_len, dtype=np.int64)[None, :]
        real = positions >= starts[:, None]
        gathered = self.items[np.where(real, positions, 0)] if len(self.items) else np.zeros(positions.shape, np.int64)
        return np.where(real, gathered + offset, 0).astype(np.int64)


def session_cases(
    sessions: Sequence[np.ndarray] | list[list[int]], max_prefix_len: int | None = None
) -> SessionCases:
    """One case per prefix of every session: ``[i1..it] -> i(t+1)`` for ``t = 1..n-1``.

    Sessions shorter than 2 items give no case. Cases are ordered by session, then by prefix length.

    Args:
        sessions: item ids of each session, in time order.
        max_prefix_len: if set, each prefix keeps only its last ``max_prefix_len`` items (the
            target and the number of cases are unchanged).

    Returns:
        :class:`SessionCases` whose ``session_index`` is the position of the session in ``sessions``.
    """
    lengths = np.array([len(s) for s in sessions], dtype=np.int64)
    items = _concat_int64(sessions)
    session_starts = np.cumsum(lengths) - lengths
    n_cases = np.maximum(lengths - 1, 0)
    session_index = np.repeat(np.arange(len(lengths), dtype=np.int64), n_cases)
    # Prefix length t = 1..n-1 within each session.
    t = np.arange(n_cases.sum(), dtype=np.int64) - np.repeat(np.cumsum(n_cases) - n_cases, n_cases) + 1
    starts = session_starts[session_index]
    ends = starts + t
    if max_prefix_len is not None:
        starts = np.maximum(starts, ends - max_prefix_len)
    return SessionCases(items, starts, ends, items[ends], session_index)


def _concat_int64(arrays: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    if not len(arrays):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays])


def target_ranks(scores: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target: the number of items scored at least as high (itself included).

    Comparing with the target's own score avoids sorting the whole row. Ties count against the
    target (as in ``sampled.py``): a model whose scores collapsed to a constant ranks every target
    last, never first.

    Args:
        scores: ``(B, n_items)`` scores over item ids ``0..n_items-1``.
        targets: ``(B,)`` target item ids.

    Returns:
        ``(B,)`` int64 ranks in ``[1, n_items]``.

    Raises:
        ValueError: if a target id is out of range or a target's score is NaN (NaN compares false
            with everything and would rank first).
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if scores.shape[0] != len(targets):
        raise ValueError(f"{scores.shape[0]} score rows for {len(targets)} targets")
    if len(targets) and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"target ids must lie in 0..{scores.shape[1] - 1}")
    if isinstance(scores, torch.Tensor):
        index = torch.as_tensor(targets, device=scores.device)[:, None]
        target_scores = scores.gather(1, index)
        if bool(torch.isnan(target_scores).any()):
            raise ValueError("NaN score for a target")
        return (scores >= target_scores).sum(dim=1).cpu().numpy().astype(np.int64)
    scores = np.asarray(scores)
    target_scores = np.take_along_axis(scores, targets[:, None], axis=1)
    if np.isnan(target_scores).any():
        raise ValueError("NaN score for a target")
    return (scores >= target_scores).sum(axis=1).astype(np.int64)


def session_metrics(
    scores: np.ndarray | torch.Tensor, targets: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-case metrics of ONE batch under :data:`SESSION_PROTOCOL`.

    Full ranking over all items and no masking of the prefix items. The rank of a target is the
    number of items scored at least as high as it, itself included (ties count against it; see
    :func:`target_ranks`).

    Args:
        scores: ``(B, n_items)`` scores (numpy or torch; torch stays on its device for the compare).
        targets: ``(B,)`` target item ids.
        ks: cut-offs, e.g. ``[10, 20]``.

    Returns:
        For each ``k``: ``"hit@k"`` (1.0 if ``rank <= k``; P@K in SR-GNN = Recall@K with one
        target), ``"mrr@k"`` (``1 / rank`` if ``rank <= k`` else 0) and ``"ndcg@k"``
        (``1 / log2(rank + 1)`` if ``rank <= k`` else 0), each a ``(B,)`` float64 array.
    """
    ranks = target_ranks(scores, targets).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        within = ranks <= k
        out[f"hit@{k}"] = within.astype(np.float64)
        out[f"mrr@{k}"] = np.where(within, 1.0 / ranks, 0.0)
        out[f"ndcg@{k}"] = np.where(within, 1.0 / np.log2(ranks + 1.0), 0.0)
    return out


@dataclass
class SessionMetricSums:
    """Sums per-case metrics over batches; means are over all cases seen.

    Example:
        >>> import numpy as np
        >>> sums = SessionMetricSums()
        >>> sums.add({"hit@20": np.array([1.0, 0.0]), "mrr@20": np.array([0.5, 0.0])})
        >>> sums.means(), sums.describe()
        ({'p@20': 0.5, 'mrr@20': 0.25}, 'P@20 50.00  MRR@20 25.00')
    """

    sums: dict[str, float] = field(default_factory=dict)
    n_cases: int = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Add one batch of :func:`session_metrics` output (all arrays of the same length)."""
        sizes = {len(v) for v in batch.values()}
        if len(sizes) > 1:
            raise ValueError("per-case metric arrays of one batch must have the same length")
        for key, values in batch.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values))
        self.n_cases += sizes.pop() if sizes else 0

    def means(self) -> dict[str, float]:
        """Mean per case, keyed by report name (``"p@20"``, ``"mrr@20"``, ``"ndcg@20"``)."""
        n = max(self.n_cases, 1)
        return {_report_key(key): total / n for key, total in self.sums.items()}

    def describe(self) -> str:
        """Means in percent, as the papers print them, e.g. ``P@20 50.73  MRR@20 17.59``."""
        parts = []
        for key, value in self.means().items():
            name, k = key.split("@")
            parts.append(f"{_DISPLAY_NAMES.get(name, name.upper())}@{k} {100.0 * value:.2f}")
        return "  ".join(parts)


def _report_key(per_case_key: str) -> str:
    name, k = per_case_key.split("@")
    return f"{_REPORT_NAMES.get(name, name)}@{k}"


def evaluate_sessions(
    score_batch: Callable[[np.ndarray], torch.Tensor | np.ndarray],
    cases: SessionCases,
    ks: Sequence[int],
    batch_size: int = 512,
    max_len: int = 50,
    progress: bool = False,
) -> dict[str, float]:
    """Mean session metrics of a scorer over all cases, under :data:`SESSION_PROTOCOL`.

    Args:
        score_batch: maps ``(B, max_len)`` int64 windows (item id + 1, 0 = left padding) to
            ``(B, n_items)`` scores over item ids ``0..n_items-1``.
        cases: the test cases, e.g. from :func:`session_cases`.
        ks: cut-offs.
        batch_size: cases per call of ``score_batch``.
        max_len: window width (the model's maximum sequence length).
        progress: show a tqdm bar.

    Returns:
        ``"p@k"``, ``"mrr@k"``, ``"ndcg@k"`` for every k, plus ``"n_cases"``.
    """
    sums = SessionMetricSums()
    batch_starts = range(0, len(cases), batch_size)
    for start in tqdm(batch_starts, desc="session eval", disable=not progress):
        rows = slice(start, min(start + batch_size, len(cases)))
        with torch.no_grad():
            scores = score_batch(cases.windows(rows, max_len=max_len, offset=1))
        sums.add(session_metrics(scores, cases.targets[rows], ks))
    result = sums.means()
    result["n_cases"] = sums.n_cases
    return result
