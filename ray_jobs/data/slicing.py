"""Splits and slices shared by the dataset adapters: SASRec's leave-one-out split, and
deterministic small slices of a dataset for tests and quick runs.

Example:
    >>> small = subsample_users(load_gowalla(), n_users=2000, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ray_jobs.data.dataset import InteractionData

__all__ = ["leave_one_out", "subsample_users"]

MIN_ACTIONS_FOR_EVAL = 3  # SASRec's data_partition: `if nfeedback < 3` -> train only


def _remap(values: np.ndarray, kept: np.ndarray, size: int) -> np.ndarray:
    table = np.full(size, -1, dtype=np.int64)
    table[kept] = np.arange(len(kept), dtype=np.int64)
    return table[values]


def subsample_users(
    data: InteractionData, n_users: int, seed: int = 0, compact_items: bool | None = None
) -> InteractionData:
    """Keep ``n_users`` random users (re-indexed, order preserved) and their interactions.

    Args:
        data: the full dataset.
        n_users: users to keep (all if larger than the dataset).
        seed: RNG seed for the choice of users.
        compact_items: re-index items to those in the kept users' training rows and drop held-out
            rows on other items. Defaults to true for plain (non-sequential, non-bundle) data: it
            keeps graphs small; sequential and bundle data keep the full item/bundle space so that
            leave-one-out and bundle membership stay intact.

    Returns:
        A new :class:`InteractionData` whose name gains a ``[n_users]`` suffix.
    """
    if n_users >= data.n_users:
        return data
    if compact_items is None:
        compact_items = not data.sequential and data.bundles is None
    rng = np.random.default_rng(seed)
    kept_users = np.sort(rng.choice(data.n_users, size=n_users, replace=False))
    user_ok = np.zeros(data.n_users, dtype=bool)
    user_ok[kept_users] = True

    def users_only(pairs: np.ndarray) -> np.ndarray:
        p = pairs[user_ok[pairs[:, 0]]]
        return np.stack([_remap(p[:, 0], kept_users, data.n_users), p[:, 1]], axis=1)

    train, valid, test = (users_only(getattr(data, s)) for s in ("train", "valid", "test"))
    n_items, category, item_ids = data.n_items, data.item_category, data.item_ids
    if compact_items:
        kept_items = np.unique(train[:, 1])
        item_ok = np.zeros(data.n_items, dtype=bool)
        item_ok[kept_items] = True

        def items_only(pairs: np.ndarray) -> np.ndarray:
            p = pairs[item_ok[pairs[:, 1]]]
            return np.stack([p[:, 0], _remap(p[:, 1], kept_items, data.n_items)], axis=1)

        train, valid, test = items_only(train), items_only(valid), items_only(test)
        n_items = len(kept_items)
        category = None if category is None else category[kept_items]
        item_ids = None if item_ids is None else item_ids[kept_items]
    bundles = data.bundles
    if bundles is not None:
        bundles = dataclasses.replace(bundles, user_item=users_only(bundles.user_item))
    return dataclasses.replace(
        data,
        name=f"{data.name}[{n_users}]",
        n_users=n_users,
        n_items=n_items,
        train=train,
        valid=valid,
        test=test,
        item_category=category,
        bundles=bundles,
        user_ids=None if data.user_ids is None else data.user_ids[kept_users],
        item_ids=item_ids,
    )


def leave_one_out(
    pairs: np.ndarray, min_actions: int = MIN_ACTIONS_FOR_EVAL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split chronologically ordered ``(user, item)`` rows into train / valid (2nd last) / test (last).

    Args:
        pairs: ``(n, 2)`` rows; each user's rows must be in time order (users need not be contiguous).
        min_actions: users with fewer actions go to train only.

    Returns:
        ``(train, valid, test)``, each sorted by user with the time order kept inside a user.
    """
    order = np.argsort(pairs[:, 0], kind="stable")
    p = pairs[order]
    _, starts, counts = np.unique(p[:, 0], return_index=True, return_counts=True)
    from_end = np.repeat(starts + counts, counts) - np.arange(len(p))  # 1 for the last action
    evaluated = np.repeat(counts >= min_actions, counts)
    is_test = evaluated & (from_end == 1)
    is_valid = evaluated & (from_end == 2)
    return p[~(is_test | is_valid)], p[is_valid], p[is_test]
