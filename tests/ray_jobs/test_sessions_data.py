"""Session building, SR-GNN-style splitting and session file readers, on tiny synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from ray_jobs.data.sessions import (
    drop_consecutive_repeats,
    last_days_cut,
    read_recbole_session_files,
    read_session_txt,
    sessionize,
    split_sessions,
)
from ray_jobs.evaluation.session import session_cases


def as_lists(sessions: list[np.ndarray]) -> list[list[int]]:
    return [s.tolist() for s in sessions]


def test_a_gap_of_exactly_30_minutes_does_not_cut_but_one_second_more_does():
    s = sessionize(np.array([1, 1, 1]), np.array([10, 11, 12]), np.array([0, 1800, 3601]))
    assert as_lists(s.sessions) == [[10, 11], [12]]
    assert s.start_times.tolist() == [0, 3601]
    assert s.users.tolist() == [1, 1]
    assert len(s) == 2


def test_custom_gap():
    s = sessionize(np.array([1, 1]), np.array([10, 11]), np.array([0, 61]), gap_s=60)
    assert as_lists(s.sessions) == [[10], [11]]


def test_events_are_ordered_by_user_then_time_with_ties_in_input_order():
    users = np.array([2, 1, 1, 2, 1])
    items = np.array([20, 11, 12, 21, 10])
    times = np.array([5, 10, 10, 0, 0])
    s = sessionize(users, items, times)
    assert as_lists(s.sessions) == [[10, 11, 12], [21, 20]]
    assert s.users.tolist() == [1, 2]
    assert s.start_times.tolist() == [0, 0]


def test_consecutive_repeats_collapse_by_default():
    users, items, times = np.ones(5, np.int64), np.array([5, 5, 6, 5, 5]), np.arange(5)
    assert as_lists(sessionize(users, items, times).sessions) == [[5, 6, 5]]
    assert as_lists(sessionize(users, items, times, dedupe_consecutive=False).sessions) == [[5, 5, 6, 5, 5]]
    assert drop_consecutive_repeats(np.array([1, 1, 2, 1])).tolist() == [1, 2, 1]


def test_a_repeat_across_a_session_cut_is_kept_and_a_refresh_keeps_the_session_alive():
    # 7 at 0 and 7 at 5000: two sessions. Refreshes every 1000 s keep one session over 3000 s.
    s = sessionize(np.array([1, 1, 2, 2, 2, 2]), np.array([7, 7, 8, 8, 8, 9]),
                   np.array([0, 5000, 0, 1000, 2000, 3000]))
    assert as_lists(s.sessions) == [[7], [7], [8, 9]]
    assert s.start_times.tolist() == [0, 5000, 0]
    assert s.users.tolist() == [1, 1, 2]


def test_sessionize_on_no_events():
    s = sessionize(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(s) == 0 and s.users.tolist() == [] and s.start_times.tolist() == []


def test_split_by_start_time_and_reindex_in_first_appearance_order():
    sessions = [np.array([1, 2]), np.array([2, 3]), np.array([3, 1]), np.array([1]), np.array([2, 1])]
    starts = np.array([0, 100, 200, 300, 50])
    split = split_sessions(sessions, starts, cut_time=200, valid_share=0.0, min_item_count=1)
    # Training in start order: #0 (t=0), #4 (t=50), #1 (t=100); #2 starts at the cut -> test;
    # #3 has one item -> dropped.
    assert split.train_index.tolist() == [0, 4, 1]
    assert split.item_raw_ids.tolist() == [1, 2, 3]
    assert split.n_items == 3
    assert as_lists(split.train) == [[0, 1], [1, 0], [1, 2]]
    assert split.test_index.tolist() == [2]
    assert as_lists(split.test) == [[2, 0]]
    assert split.valid == [] and split.valid_index.tolist() == []


def test_validation_is_a_seeded_share_of_training_sessions():
    sessions = [np.array([1, 2])] * 20 + [np.array([2, 1])]  # the last one starts at the cut: test
    starts = np.arange(21)
    a = split_sessions(sessions, starts, cut_time=20, min_item_count=1, seed=3)
    b = split_sessions(sessions, starts, cut_time=20, min_item_count=1, seed=3)
    assert len(a.valid) == 2 and len(a.train) == 18 and len(a.test) == 1
    assert a.valid_index.tolist() == b.valid_index.tolist()
    assert sorted(a.valid_index.tolist() + a.train_index.tolist()) == list(range(20))
    assert np.all(np.diff(a.valid_index) > 0) and np.all(np.diff(a.train_index) > 0)  # time order kept
    # SR-GNN's rounding: round(31 * 0.9) = 28 training sessions, so 3 are validation.
    c = split_sessions([np.array([1, 2])] * 31, np.arange(31), cut_time=99, min_item_count=1)
    assert len(c.valid) == 3 and len(c.train) == 28 and len(c.test) == 0


def test_filters_apply_in_sr_gnn_order():
    sessions = [
        np.array([1, 2]),     # 0: kept
        np.array([1, 3]),     # 1: 3 is rare -> [1] -> dropped
        np.array([4]),        # 2: length 1, dropped before counting, so item 4 counts once
        np.array([4, 5]),     # 3: both rare -> dropped
        np.array([2, 6]),     # 4: 6 is rare -> [2] -> dropped
        np.array([1, 7, 2]),  # 5: 7 is rare -> [1, 2]
    ]
    split = split_sessions(sessions, np.arange(6), cut_time=100, valid_share=0.0, min_item_count=2)
    assert split.train_index.tolist() == [0, 5]
    assert as_lists(split.train) == [[0, 1], [0, 1]]
    assert split.item_raw_ids.tolist() == [1, 2]
    # With the default of 5 occurrences nothing survives.
    assert split_sessions(sessions, np.arange(6), cut_time=100, valid_share=0.0).n_items == 0


def test_test_sessions_keep_only_items_known_to_training():
    sessions = [
        np.array([1, 2, 1]),        # train
        np.array([2, 1, 2]),        # train
        np.array([3, 1]),           # train, but 3 occurs once -> [1] -> dropped
        np.array([9, 1, 3, 2, 8]),  # test: 9, 8 unseen, 3 filtered out of training -> [1, 2]
        np.array([9, 2]),           # test: [2] -> dropped
        np.array([3, 3]),           # test: nothing known -> dropped
    ]
    split = split_sessions(sessions, np.array([0, 1, 2, 10, 11, 12]), cut_time=10,
                           valid_share=0.0, min_item_count=2)
    assert split.item_raw_ids.tolist() == [1, 2]
    assert as_lists(split.train) == [[0, 1, 0], [1, 0, 1]]
    assert split.test_index.tolist() == [3]
    assert as_lists(split.test) == [[0, 1]]


def test_string_item_ids_are_reindexed():
    sessions = [np.array(["b", "a"]), np.array(["a", "c"]), np.array(["c", "z"])]
    split = split_sessions(sessions, np.array([0, 1, 2]), cut_time=2, valid_share=0.0, min_item_count=1)
    assert split.item_raw_ids.tolist() == ["b", "a", "c"]
    assert as_lists(split.train) == [[0, 1], [1, 2]]
    assert split.test == []  # ["c", "z"] -> ["c"] -> dropped


def test_last_days_cut():
    assert last_days_cut(np.array([0, 10 * 86_400]), days=7) == 3 * 86_400


def test_read_session_txt(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("1 2 3\n\n4 5\n", encoding="utf-8")
    sessions = read_session_txt(path)
    assert as_lists(sessions) == [[1, 2, 3], [4, 5]]
    assert sessions[0].dtype == np.int64
    cases = session_cases(sessions)
    assert cases.targets.tolist() == [2, 3, 5]  # the line's last id is its final target


HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token\n"


def test_recbole_session_files_share_one_vocabulary_and_are_not_reaugmented(tmp_path):
    train = tmp_path / "x.train.inter"
    test = tmp_path / "x.test.inter"
    train.write_text(HEADER + "s1\t10 9\t11\ns1\t10\t9\ns2\t12\t10\n", encoding="utf-8")
    test.write_text(HEADER + "s3\t11 13\t10\n", encoding="utf-8")
    vocabulary, (train_cases, test_cases) = read_recbole_session_files([train, test])
    assert vocabulary.tolist() == ["10", "11", "12", "13", "9"]  # sorted tokens, over both files
    assert len(train_cases) == 3  # one case per row
    assert [train_cases.prefix(c).tolist() for c in range(3)] == [[0, 4], [0], [2]]
    assert train_cases.targets.tolist() == [1, 4, 0]
    assert train_cases.session_index.tolist() == [0, 0, 1]
    assert train_cases.windows(slice(None), max_len=2).tolist() == [[1, 5], [0, 1], [0, 3]]
    assert test_cases.prefix(0).tolist() == [1, 3]
    assert test_cases.targets.tolist() == [0]


def test_recbole_session_file_needs_the_item_list(tmp_path):
    path = tmp_path / "bad.inter"
    path.write_text("session_id:token\titem_id:token\ns1\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="item_id_list"):
        read_recbole_session_files([path])
