"""Session data for session-based recommendation (the SR-GNN / GCE-GNN preprocessing).

Three steps, each a small function:

* :func:`sessionize` cuts each user's time-ordered events into sessions at inactivity gaps longer
  than 30 minutes, and by default collapses consecutive repeats of an item (a page refresh is not a
  transition to a new item).
* :func:`split_sessions` applies SR-GNN's ``preprocess.py`` filters and its time split: sessions
  starting at or after a cut time are test, 10% of the rest (seeded) are validation, and items are
  re-indexed to ``0..n_items-1`` over the training sessions.
* Readers for ready-made session files: the plain text format (:func:`read_session_txt`) and
  RecBole's already augmented session atomic files (:func:`read_recbole_session_files`).

Example:
    >>> import numpy as np
    >>> s = sessionize(np.array([1, 1, 1, 1]), np.array([10, 10, 11, 12]), np.array([0, 5, 10, 4000]))
    >>> [x.tolist() for x in s.sessions], s.start_times.tolist()
    ([[10, 11], [12]], [0, 4000])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ray_jobs.data.recbole_atomic import read_atomic
from ray_jobs.evaluation.session import SessionCases

__all__ = [
    "SessionSplit",
    "UserSessions",
    "drop_consecutive_repeats",
    "last_days_cut",
    "read_recbole_session_files",
    "read_session_txt",
    "session_pairs",
    "sessionize",
    "split_sessions",
]

SECONDS_PER_DAY = 86_400
ITEM_LIST_FIELD = "item_id_list"  # RecBole session files: the prefix, space-separated tokens
TARGET_FIELD = "item_id"  # ... and the next item
SESSION_FIELD = "session_id"


@dataclass(frozen=True, eq=False)
class UserSessions:
    """Sessions cut from an event log, ordered by (user, start time).

    Attributes:
        sessions: raw item ids of each session, in event order.
        users: ``(n_sessions,)`` user of each session.
        start_times: ``(n_sessions,)`` timestamp of each session's first event.
    """

    sessions: list[np.ndarray]
    users: np.ndarray
    start_times: np.ndarray

    def __len__(self) -> int:
        return len(self.sessions)


def drop_consecutive_repeats(items: np.ndarray) -> np.ndarray:
    """``[a, a, b, a] -> [a, b, a]``: keep an item only where it differs from the previous one."""
    items = np.asarray(items)
    keep = np.ones(len(items), dtype=bool)
    keep[1:] = items[1:] != items[:-1]
    return items[keep]


def sessionize(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    gap_s: float = 1800,
    dedupe_consecutive: bool = True,
) -> UserSessions:
    """Cut each user's events into sessions where the gap between two events exceeds ``gap_s``.

    Events are ordered by (user, timestamp); events with equal user and timestamp keep their input
    order. A gap of exactly ``gap_s`` seconds does not cut.

    Args:
        user_ids: ``(n,)`` user of each event.
        item_ids: ``(n,)`` item of each event.
        timestamps: ``(n,)`` event times in seconds.
        gap_s: longest inactivity (seconds) inside a session; 30 minutes by default.
        dedupe_consecutive: collapse consecutive repeats of an item inside a session (a refresh or
            double click is not a transition). Gaps are measured on all events, so a refresh keeps
            the session alive; the start time is the first event's either way.

    Returns:
        :class:`UserSessions` ordered by user, then start time.
    """
    user_ids, item_ids, timestamps = map(np.asarray, (user_ids, item_ids, timestamps))
    order = np.lexsort((timestamps, user_ids))  # lexsort is stable: ties keep input order
    users, items, times = user_ids[order], item_ids[order], timestamps[order]
    starts_session = np.ones(len(order), dtype=bool)
    starts_session[1:] = (users[1:] != users[:-1]) | (times[1:] - times[:-1] > gap_s)
    keep = starts_session.copy() if dedupe_consecutive else np.ones(len(order), dtype=bool)
    if dedupe_consecutive:
        keep[1:] |= items[1:] != items[:-1]
    session_of_event = np.cumsum(starts_session) - 1
    lengths = np.bincount(session_of_event[keep], minlength=int(starts_session.sum()))
    first = np.flatnonzero(starts_session)
    return UserSessions(_unflatten(items[keep], lengths), users[first], times[first])


@dataclass(frozen=True, eq=False)
class SessionSplit:
    """Train/valid/test sessions over contiguous item ids ``0..n_items-1``.

    Attributes:
        train, valid, test: sessions as int64 item-id arrays, each list in start-time order.
        item_raw_ids: ``(n_items,)`` raw id of each item index.
        train_index, valid_index, test_index: position of each kept session in the input.
    """

    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    item_raw_ids: np.ndarray
    train_index: np.ndarray
    valid_index: np.ndarray
    test_index: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.item_raw_ids)


def session_pairs(*parts: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Sessions as ``(session, item)`` interaction rows, the form every trainer reads: each session
    is one "user" whose rows keep their order; sessions are numbered across ``parts`` in turn (train,
    valid, test), so no two parts share an id. Returns the rows of each part and the session count."""
    out, next_id = [], 0
    for sessions in parts:
        lengths = np.array([len(x) for x in sessions], dtype=np.int64)
        ids = np.repeat(np.arange(next_id, next_id + len(sessions), dtype=np.int64), lengths)
        items = np.concatenate(sessions).astype(np.int64) if len(sessions) else np.zeros(0, dtype=np.int64)
        out.append(np.stack([ids, items], axis=1))
        next_id += len(sessions)
    return out, next_id


def last_days_cut(start_times: np.ndarray, days: float) -> float:
    """Cut time leaving the last ``days`` days for test (SR-GNN: 7 for Diginetica, 1 for Yoochoose)."""
    return float(np.max(start_times)) - days * SECONDS_PER_DAY


def split_sessions(
    sessions: Sequence[np.ndarray],
    start_times: np.ndarray,
    cut_time: float,
    valid_share: float = 0.1,
    min_item_count: int = 5,
    seed: int = 0,
) -> SessionSplit:
    """Time split and filtering in the order of SR-GNN's ``preprocess.py``.

    1. drop sessions of length 1 (they hold no transition);
    2. sessions starting at or after ``cut_time`` are test, the rest training;
    3. drop items seen fewer than ``min_item_count`` times in the training sessions, then training
       sessions left with fewer than 2 items;
    4. re-index items in order of first appearance in the time-ordered training sessions;
    5. test sessions keep only items known to training (prefix items and targets alike) and are
       dropped below 2 items;
    6. a seeded random ``valid_share`` of the training sessions becomes validation.

    Deviations from SR-GNN, each to avoid test leakage or a lost session: item counts come from the
    training part only (SR-GNN counts over all sessions before the split), the split uses the
    session's start (SR-GNN: its last day/time, and drops sessions exactly at the cut), and the
    validation share is drawn over whole sessions (SR-GNN shuffles augmented prefixes, so prefixes
    of one session land in both parts). Validation sessions share the training vocabulary, as in
    SR-GNN, whose validation split happens after preprocessing. Consecutive repeats that a removed
    item leaves behind (``a x a -> a a``) are not collapsed again.

    Args:
        sessions: raw item ids of each session, in event order.
        start_times: ``(n_sessions,)`` start time of each session.
        cut_time: first start time that belongs to test (see :func:`last_days_cut`).
        valid_share: share of training sessions held out for validation.
        min_item_count: least number of training occurrences an item needs to be kept.
        seed: seeds the validation draw.
    """
    start_times = np.asarray(start_times)
    lengths = np.array([len(s) for s in sessions], dtype=np.int64)
    candidates = np.flatnonzero(lengths >= 2)
    by_time = candidates[np.argsort(start_times[candidates], kind="stable")]
    is_test = start_times[by_time] >= cut_time
    train_index, test_index = by_time[~is_test], by_time[is_test]

    train_raw, train_index = _drop_rare_items([sessions[i] for i in train_index], train_index, min_item_count)
    item_raw_ids = _first_appearance(train_raw)
    train_flat, train_lengths = _flatten(train_raw)
    train = _unflatten(_lookup(item_raw_ids, train_flat)[0], train_lengths)
    test, test_index = _keep_known_items([sessions[i] for i in test_index], test_index, item_raw_ids)

    is_valid = _draw_validation(len(train), valid_share, seed)
    return SessionSplit(
        train=[s for s, v in zip(train, is_valid) if not v],
        valid=[s for s, v in zip(train, is_valid) if v],
        test=test,
        item_raw_ids=item_raw_ids,
        train_index=train_index[~is_valid],
        valid_index=train_index[is_valid],
        test_index=test_index,
    )


def _drop_rare_items(
    sessions: list[np.ndarray], index: np.ndarray, min_count: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Remove items with fewer than ``min_count`` occurrences, then sessions shorter than 2."""
    flat, lengths = _flatten(sessions)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= min_count
    return _keep_long(flat, lengths, keep, index)


def _keep_known_items(
    sessions: list[np.ndarray], index: np.ndarray, item_raw_ids: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Map to item indices, dropping unknown items, then sessions shorter than 2."""
    flat, lengths = _flatten(sessions)
    ids, known = _lookup(item_raw_ids, flat)
    return _keep_long(ids, lengths, known, index)


def _keep_long(
    flat: np.ndarray, lengths: np.ndarray, keep: np.ndarray, index: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Apply a per-item keep mask, then drop sessions left with fewer than 2 items."""
    session_of_item = np.repeat(np.arange(len(lengths)), lengths)
    new_lengths = np.bincount(session_of_item[keep], minlength=len(lengths))
    kept = _unflatten(flat[keep], new_lengths)
    long_enough = new_lengths >= 2
    return [s for s, ok in zip(kept, long_enough) if ok], np.asarray(index, dtype=np.int64)[long_enough]


def _first_appearance(sessions: list[np.ndarray]) -> np.ndarray:
    """Distinct items in order of first appearance (SR-GNN numbers items this way, from 1)."""
    flat, _ = _flatten(sessions)
    _, first = np.unique(flat, return_index=True)
    return flat[np.sort(first)]


def _lookup(vocabulary: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value in ``vocabulary`` (any order) and whether it is there at all."""
    values = np.asarray(values)
    if len(vocabulary) == 0:
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    order = np.argsort(vocabulary, kind="stable")
    pos = np.minimum(np.searchsorted(vocabulary[order], values), len(vocabulary) - 1)
    known = vocabulary[order][pos] == values
    return order[pos].astype(np.int64), known


def _draw_validation(n_sessions: int, share: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation sessions; the count rounds as SR-GNN's ``split_validation``."""
    n_valid = n_sessions - int(np.round(n_sessions * (1.0 - share)))
    mask = np.zeros(n_sessions, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n_sessions)[:n_valid]] = True
    return mask


def _flatten(sessions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sessions], dtype=np.int64)
    flat = np.concatenate([np.asarray(s) for s in sessions]) if len(sessions) else np.zeros(0, np.int64)
    return flat, lengths


def _unflatten(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def read_session_txt(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Sessions from a text file with one session per line, item ids separated by spaces.

    The last id of a line is the session's final target; augmenting the whole line with
    :func:`ray_jobs.evaluation.session.session_cases` gives every ``prefix -> next item`` case of
    it. Blank lines are skipped.
    """
    with open(path, encoding="utf-8") as handle:
        return [np.array(line.split(), dtype=np.int64) for line in handle if line.strip()]


def read_recbole_session_files(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[np.ndarray, list[SessionCases]]:
    """Read RecBole session atomic files (e.g. ``x.train.inter``, ``x.valid.inter``, ``x.test.inter``).

    Each row is already one ``prefix -> target`` case (header
    ``session_id:token  item_id_list:token_seq  item_id:token``), so rows are taken as they are,
    without further augmentation. Tokens map to ids through one vocabulary over all the files, in
    sorted token order (as :mod:`ray_jobs.data.recbole_atomic`), so the files agree on ids.

    Returns:
        The vocabulary (raw token of each id) and one :class:`SessionCases` per file, whose
        ``session_index`` numbers the file's ``session_id`` values in order of appearance (the row
        number when the column is absent).
    """
    frames = [_read_session_frame(Path(p)) for p in paths]
    prefix_tokens = [[row.split() for row in frame[ITEM_LIST_FIELD]] for frame in frames]
    all_tokens = [t for prefixes in prefix_tokens for prefix in prefixes for t in prefix]
    all_tokens += [t for frame in frames for t in frame[TARGET_FIELD]]
    vocabulary = np.unique(np.array(all_tokens, dtype=str))
    cases = []
    for frame, prefixes in zip(frames, prefix_tokens):
        ids = [np.searchsorted(vocabulary, np.array(p, dtype=str)).astype(np.int64) for p in prefixes]
        targets = np.searchsorted(vocabulary, frame[TARGET_FIELD].to_numpy(dtype=str))
        sessions = pd.factorize(frame[SESSION_FIELD])[0] if SESSION_FIELD in frame.columns else None
        cases.append(SessionCases.from_prefixes(ids, targets, sessions))
    return vocabulary, cases


def _read_session_frame(path: Path) -> pd.DataFrame:
    frame = read_atomic(path)
    for needed in (ITEM_LIST_FIELD, TARGET_FIELD):
        if needed not in frame.columns:
            raise ValueError(f"{path} lacks the {needed!r} field")
    return frame
