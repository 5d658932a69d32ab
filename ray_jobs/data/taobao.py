"""Taobao UserBehavior subset (``taobao_userbehavior_subset/UserBehavior_head.csv``) with categories.

CSV without header: ``user_id,item_id,category_id,behavior_type,timestamp`` (Tianchi dataset 649).
Two forms:
- :func:`load_taobao`: events sorted by time within each user and split leave-one-out (last event
  test, second last valid), keeping repeated events. Items carry their category, so the category
  metrics (cross-category share, category diversity) can run on real data.
- :func:`load_taobao_sessions`: the session-based form (SR-GNN's preprocessing, see
  ``ray_jobs/data/sessions.py``): each user's events cut at 30-minute gaps, the sessions that start
  in the last day are test, 10% of the others validation; one "user" per session. Evaluated with the
  ``session`` protocol (one case per prefix, full ranking, no masking).
No published numbers apply to this subset (see the datasets README).

Example:
    >>> data = load_taobao(behaviors=("buy", "cart"))  # doctest: +SKIP
    >>> sessions = load_taobao_sessions(test_days=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.paths import resolve_datasets_dir
from ray_jobs.data.slicing import leave_one_out
from ray_jobs.data.sessions import last_days_cut, session_pairs, sessionize, split_sessions

__all__ = ["load_taobao", "load_taobao_sessions", "BEHAVIORS"]

SUBDIR = "taobao_userbehavior_subset"
FILE = "UserBehavior_head.csv"
BEHAVIORS = ("pv", "cart", "fav", "buy")
COLUMNS = ["user_id", "item_id", "category_id", "behavior", "timestamp"]


def load_taobao(
    datasets_dir: str | os.PathLike[str] | None = None, behaviors: Sequence[str] = BEHAVIORS
) -> InteractionData:
    """Load the Taobao subset as a sequential dataset with item categories.

    Args:
        datasets_dir: folder holding ``taobao_userbehavior_subset/``.
        behaviors: event types to keep (default: all four).

    Returns:
        A sequential :class:`InteractionData`; ids are re-indexed in sorted raw-id order.
    """
    path, frame = _read(datasets_dir, behaviors)
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    user_ids, users = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(frame["item_id"].to_numpy(), return_inverse=True)
    category = _categories(frame, item_ids)
    train, valid, test = leave_one_out(np.stack([users, items], axis=1).astype(np.int64))
    return InteractionData(
        name="taobao",
        n_users=int(users.max()) + 1,
        n_items=len(item_ids),
        train=train,
        valid=valid,
        test=test,
        sequential=True,
        test_excludes_valid=True,
        item_category=category.astype(np.int64),
        source_files=(str(path),),
        user_ids=user_ids,
        item_ids=item_ids,
    )


def load_taobao_sessions(
    datasets_dir: str | os.PathLike[str] | None = None,
    behaviors: Sequence[str] = BEHAVIORS,
    gap_s: float = 1800.0,
    test_days: float = 1.0,
    valid_share: float = 0.1,
    min_item_count: int = 5,
    seed: int = 0,
) -> InteractionData:
    """The Taobao subset as session-based data (SR-GNN's preprocessing and time split).

    Args:
        datasets_dir: folder holding ``taobao_userbehavior_subset/``.
        behaviors: event types to keep (default: all four).
        gap_s: inactivity that ends a session (30 minutes).
        test_days: sessions starting in the last ``test_days`` days of the slice are test (its 9
            days are too short for SR-GNN's 7).
        valid_share: share of the training sessions held out for validation and early stopping.
        min_item_count: items seen fewer times in the training sessions are dropped (SR-GNN: 5).
        seed: draws the validation sessions.

    Returns:
        A sequential :class:`InteractionData` with one "user" per session (train, then valid, then
        test sessions), items re-indexed over the training sessions, their raw ids and categories.
    """
    path, frame = _read(datasets_dir, behaviors)
    cut = sessionize(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame["timestamp"].to_numpy(), gap_s)
    split = split_sessions(cut.sessions, cut.start_times, last_days_cut(cut.start_times, test_days),
                           valid_share=valid_share, min_item_count=min_item_count, seed=seed)
    (train, valid, test), n_sessions = session_pairs(split.train, split.valid, split.test)
    return InteractionData(
        name="taobao_sessions",
        n_users=n_sessions,
        n_items=split.n_items,
        train=train,
        valid=valid,
        test=test,
        sequential=True,
        test_excludes_valid=False,  # sessions are disjoint: nothing of one is masked for another
        item_category=_categories(frame, split.item_raw_ids),
        source_files=(str(path),),
        item_ids=split.item_raw_ids,
    )


def _read(datasets_dir: str | os.PathLike[str] | None, behaviors: Sequence[str]) -> tuple[Path, pd.DataFrame]:
    unknown = set(behaviors) - set(BEHAVIORS)
    if unknown:
        raise ValueError(f"unknown behaviors {sorted(unknown)}; choose from {BEHAVIORS}")
    path = Path(resolve_datasets_dir(datasets_dir)) / SUBDIR / FILE
    frame = pd.read_csv(path, header=None, names=COLUMNS)
    return path, frame[frame["behavior"].isin(list(behaviors))]


def _categories(frame: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Contiguous category index of each raw item id (an item has one category in this data; the
    first seen is taken to be safe)."""
    first = frame.drop_duplicates("item_id").set_index("item_id")["category_id"]
    _, category = np.unique(first.loc[item_ids].to_numpy(), return_inverse=True)
    return category.astype(np.int64)
