"""Session-based next-item protocol (SR-GNN / GCE-GNN) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_jobs.evaluation.session import (
    SESSION_PROTOCOL,
    SessionCases,
    SessionMetricSums,
    evaluate_sessions,
    session_cases,
    session_metrics,
    target_ranks,
)

SESSIONS = [np.array([1, 2, 3, 4]), np.array([5]), np.array([6, 7])]


def prefixes(cases: SessionCases) -> list[list[int]]:
    return [cases.prefix(c).tolist() for c in range(len(cases))]


def test_one_case_per_prefix_and_short_sessions_give_none():
    cases = session_cases(SESSIONS)
    assert len(cases) == 4  # 3 from the 4-item session, 0 from [5], 1 from [6, 7]
    assert prefixes(cases) == [[1], [1, 2], [1, 2, 3], [6]]
    assert cases.targets.tolist() == [2, 3, 4, 7]
    assert cases.session_index.tolist() == [0, 0, 0, 2]
    assert cases.prefix_lengths.tolist() == [1, 2, 3, 1]
    assert cases.targets.dtype == np.int64


def test_session_cases_accepts_lists_and_empty_input():
    cases = session_cases([[3, 3], [1, 2, 1]])
    assert prefixes(cases) == [[3], [1], [1, 2]]
    assert cases.targets.tolist() == [3, 2, 1]
    assert len(session_cases([])) == 0


def test_max_prefix_len_keeps_the_most_recent_items_and_all_cases():
    cases = session_cases(SESSIONS, max_prefix_len=2)
    assert prefixes(cases) == [[1], [1, 2], [2, 3], [6]]
    assert cases.targets.tolist() == [2, 3, 4, 7]


def test_prefixes_share_the_session_storage():
    cases = session_cases(SESSIONS)
    assert cases.items.tolist() == [1, 2, 3, 4, 5, 6, 7]  # each event stored once
    assert cases.starts.tolist() == [0, 0, 0, 5]
    assert cases.ends.tolist() == [1, 2, 3, 6]


def test_windows_are_left_padded_with_offset_ids():
    cases = session_cases(SESSIONS)
    assert cases.windows(slice(None), max_len=3).tolist() == [[0, 0, 2], [0, 2, 3], [2, 3, 4], [0, 0, 7]]
    # Longer prefixes are cut to their last max_len items; rows follow the given index order.
    assert cases.windows(np.array([3, 2]), max_len=2, offset=0).tolist() == [[0, 6], [2, 3]]
    assert cases.windows(slice(1, 2), max_len=1, offset=10).tolist() == [[12]]
    assert cases.windows(slice(None), max_len=3).dtype == np.int64


def test_from_prefixes_takes_cases_as_given():
    cases = SessionCases.from_prefixes([[3, 1], [], [2]], [0, 3, 1])
    assert len(cases) == 3
    assert prefixes(cases) == [[3, 1], [], [2]]
    assert cases.targets.tolist() == [0, 3, 1]
    assert cases.session_index.tolist() == [0, 1, 2]
    assert cases.windows(slice(None), max_len=2).tolist() == [[4, 2], [0, 0], [0, 3]]
    assert SessionCases.from_prefixes([[1], [2]], [2, 3], session_index=[7, 7]).session_index.tolist() == [7, 7]


def test_inconsistent_cases_are_rejected():
    with pytest.raises(ValueError):
        SessionCases(np.array([1, 2]), np.array([0]), np.array([3]), np.array([2]), np.array([0]))
    with pytest.raises(ValueError):
        SessionCases(np.array([1, 2]), np.array([0, 1]), np.array([1]), np.array([2]), np.array([0]))


# Row 0: target 0 scores 0.5; item 1 (0.9) is higher and items 2, 4 tie with it -> rank 4
# (ties count against the target).
# Row 1: target 3 is the top score -> rank 1 (it is in its own prefix in the test below).
# Row 2: target 4 is the lowest score -> rank 5.
SCORES = np.array([
    [0.5, 0.9, 0.5, 0.1, 0.5],
    [0.2, 0.3, 0.4, 0.8, 0.1],
    [0.9, 0.8, 0.7, 0.6, 0.5],
])
TARGETS = np.array([0, 3, 4])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_ranks_count_ties_against_the_target(as_tensor):
    scores = torch.tensor(SCORES) if as_tensor else SCORES
    assert target_ranks(scores, TARGETS).tolist() == [4, 1, 5]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_metrics_hand_computed_with_ties(as_tensor):
    scores = torch.tensor(SCORES, dtype=torch.float32) if as_tensor else SCORES
    m = session_metrics(scores, TARGETS, ks=[1, 3])
    assert set(m) == {"hit@1", "mrr@1", "ndcg@1", "hit@3", "mrr@3", "ndcg@3"}
    assert m["hit@1"].tolist() == [0.0, 1.0, 0.0]
    assert m["mrr@1"].tolist() == [0.0, 1.0, 0.0]
    assert m["ndcg@1"].tolist() == [0.0, 1.0, 0.0]
    assert m["hit@3"].tolist() == [0.0, 1.0, 0.0]  # row 0 ranks 4th
    assert m["mrr@3"].tolist() == [0.0, 1.0, 0.0]
    assert m["ndcg@3"].tolist() == pytest.approx([0.0, 1.0, 0.0])
    m = session_metrics(scores, TARGETS, ks=[4])
    assert m["mrr@4"].tolist() == [0.25, 1.0, 0.0]
    assert m["ndcg@4"].tolist() == pytest.approx([1 / math.log2(5), 1.0, 0.0])


def test_mrr_and_ndcg_are_zero_beyond_k():
    m = session_metrics(SCORES[2:], TARGETS[2:], ks=[4, 5])  # rank 5
    assert m["mrr@4"].tolist() == [0.0] and m["ndcg@4"].tolist() == [0.0] and m["hit@4"].tolist() == [0.0]
    assert m["mrr@5"].tolist() == [0.2]
    assert m["ndcg@5"].tolist() == pytest.approx([1 / math.log2(6)])


def test_target_in_its_own_prefix_stays_rankable():
    cases = session_cases([np.array([2, 3, 2])])  # [2] -> 3, [2, 3] -> 2
    scores = np.array([[0.0, 0.0, 0.9, 0.5], [0.0, 0.0, 0.9, 0.5]])  # item 2 on top for both
    m = session_metrics(scores, cases.targets, ks=[1])
    assert cases.targets.tolist() == [3, 2]
    assert m["hit@1"].tolist() == [0.0, 1.0]  # no masking: the revisit of item 2 is a hit
    assert m["mrr@1"].tolist() == [0.0, 1.0]


def test_constant_scores_rank_every_target_last():
    # The tie rule: a collapsed model must not look perfect.
    assert target_ranks(np.zeros((2, 4)), np.array([0, 3])).tolist() == [4, 4]


def test_bad_targets_and_nan_are_rejected():
    with pytest.raises(ValueError):
        target_ranks(SCORES, np.array([0, 3, 5]))
    with pytest.raises(ValueError):
        target_ranks(SCORES, np.array([0, 3]))
    nan_scores = SCORES.copy()
    nan_scores[1, 3] = np.nan
    with pytest.raises(ValueError):
        target_ranks(nan_scores, TARGETS)
    with pytest.raises(ValueError):
        target_ranks(torch.tensor(nan_scores), TARGETS)


def test_metric_sums_average_over_cases_across_batches():
    sums = SessionMetricSums()
    sums.add({"hit@20": np.array([1.0, 0.0]), "mrr@20": np.array([0.5, 0.0])})
    sums.add({"hit@20": np.array([1.0]), "mrr@20": np.array([0.25])})
    assert sums.n_cases == 3
    assert sums.means() == pytest.approx({"p@20": 2 / 3, "mrr@20": 0.25})
    assert sums.describe() == "P@20 66.67  MRR@20 25.00"
    with pytest.raises(ValueError):
        sums.add({"hit@20": np.array([1.0]), "mrr@20": np.array([0.5, 0.0])})


def test_metric_sums_describe_all_metrics_in_percent():
    sums = SessionMetricSums()
    sums.add(session_metrics(SCORES, TARGETS, ks=[4]))  # ranks 4, 1, 5
    assert sums.describe() == "P@4 66.67  MRR@4 41.67  NDCG@4 47.69"


def test_protocol_string_names_the_choices():
    assert SESSION_PROTOCOL.startswith("session-based next item: one test case per prefix")
    assert "no masking of items in the prefix" in SESSION_PROTOCOL
    assert "MRR@K with 0 beyond rank K" in SESSION_PROTOCOL


def next_id_scorer(n_items: int, seen_shapes: list[tuple[int, ...]]):
    """Scores item j by -|j - (last item + 1)|: predicts the id after the most recent item."""

    def score(windows: np.ndarray) -> torch.Tensor:
        seen_shapes.append(windows.shape)
        last = torch.as_tensor(windows[:, -1] - 1)  # undo the +1 offset
        return -(torch.arange(n_items)[None, :] - (last[:, None] + 1)).abs().float()

    return score


def test_evaluate_sessions_hand_computed():
    # Cases: [0] -> 1 (rank 1), [0, 1] -> 2 (rank 1), [3] -> 1 (scores peak at 4: rank 4).
    cases = session_cases([np.array([0, 1, 2]), np.array([3, 1])])
    shapes: list[tuple[int, ...]] = []
    result = evaluate_sessions(next_id_scorer(5, shapes), cases, ks=[1, 3, 5], batch_size=2, max_len=4)
    assert shapes == [(2, 4), (1, 4)]
    assert result["n_cases"] == 3
    assert result["p@1"] == pytest.approx(2 / 3)
    assert result["p@3"] == pytest.approx(2 / 3)
    assert result["p@5"] == pytest.approx(1.0)
    assert result["mrr@3"] == pytest.approx(2 / 3)
    assert result["mrr@5"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert result["ndcg@5"] == pytest.approx((1 + 1 + 1 / math.log2(5)) / 3)
    assert set(result) == {"n_cases", *(f"{m}@{k}" for m in ("p", "mrr", "ndcg") for k in (1, 3, 5))}


def test_evaluate_sessions_is_independent_of_batch_size():
    rng = np.random.default_rng(0)
    sessions = [rng.integers(0, 30, size=rng.integers(1, 9)) for _ in range(40)]
    cases = session_cases(sessions)
    table = torch.as_tensor(rng.normal(size=(31, 30)))  # fixed scores per most recent item

    def score(windows: np.ndarray) -> torch.Tensor:
        return table[torch.as_tensor(windows[:, -1])]

    one = evaluate_sessions(score, cases, ks=[5, 20], batch_size=1, max_len=3)
    many = evaluate_sessions(score, cases, ks=[5, 20], batch_size=512, max_len=3, progress=True)
    assert one["n_cases"] == many["n_cases"] == len(cases) == sum(max(len(s) - 1, 0) for s in sessions)
    for key in one:
        assert one[key] == pytest.approx(many[key])
    assert 0.0 < many["mrr@20"] <= many["p@20"] <= 1.0


def test_evaluate_sessions_on_no_cases():
    assert evaluate_sessions(next_id_scorer(3, []), session_cases([[1]]), ks=[20]) == {"n_cases": 0}
