"""Taobao UserBehavior subset (``taobao_userbehavior_subset/UserBehavior_head.csv``) with categories.

CSV without header: ``user_id,item_id,category_id,behavior_type,timestamp`` (Tianchi dataset 649).
Events are sorted by time within each user and split leave-one-out (last event test, second last
valid), keeping repeated events. Items carry their category, so the category metrics
(cross-category share, category diversity) can run on real data. No published numbers apply to this
subset (see the datasets README).

Example:
    >>> data = load_taobao(behaviors=("buy", "cart"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.paths import resolve_datasets_dir
from ray_jobs.data.sasrec_games import leave_one_out

__all__ = ["load_taobao", "BEHAVIORS"]

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
    unknown = set(behaviors) - set(BEHAVIORS)
    if unknown:
        raise ValueError(f"unknown behaviors {sorted(unknown)}; choose from {BEHAVIORS}")
    path = Path(resolve_datasets_dir(datasets_dir)) / SUBDIR / FILE
    frame = pd.read_csv(path, header=None, names=COLUMNS)
    frame = frame[frame["behavior"].isin(list(behaviors))]
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    user_ids, users = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(frame["item_id"].to_numpy(), return_inverse=True)
    # An item has one category in this data; take the first seen to be safe.
    first = frame.drop_duplicates("item_id").set_index("item_id")["category_id"]
    _, category = np.unique(first.loc[item_ids].to_numpy(), return_inverse=True)
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
